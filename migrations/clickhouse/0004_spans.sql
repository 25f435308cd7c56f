-- Per-user spans and per-hour counts, kept current by materialized views on
-- every insert into events (as in 0003).
-- type_spans: per event type and user, the first and last time the user sent
-- that type; page_spans: the same per page path (page_view events).
-- type_hours / path_hours: per UTC hour, the event count per type and the
-- page_view count per path.
-- A range that starts at or before the project's first event, or ends after
-- its last one (every "up to today" range), holds a user's events of a type
-- exactly when the span reaches into it, so unique users per type or path
-- need one row per user instead of one per user and hour (see
-- pulse.core.rollups). Other ranges read the hourly rollups or events.
CREATE TABLE IF NOT EXISTS type_spans (
    project_id  UUID,
    event_type  LowCardinality(String),
    actor_key   UInt128,
    first_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (project_id, event_type, actor_key)
TTL toDateTime(last_at) + INTERVAL {{events_ttl_days}} DAY;
CREATE TABLE IF NOT EXISTS page_spans (
    project_id  UUID,
    path        String,
    actor_key   UInt128,
    first_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (project_id, path, actor_key)
TTL toDateTime(last_at) + INTERVAL {{events_ttl_days}} DAY;
CREATE TABLE IF NOT EXISTS type_hours (
    project_id  UUID,
    hour        DateTime('UTC'),
    event_type  LowCardinality(String),
    events      UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, event_type)
TTL hour + INTERVAL {{events_ttl_days}} DAY
SETTINGS ttl_only_drop_parts = 1;
CREATE TABLE IF NOT EXISTS path_hours (
    project_id  UUID,
    hour        DateTime('UTC'),
    path        String,
    views       UInt64
)
ENGINE = SummingMergeTree(views)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, path)
TTL hour + INTERVAL {{events_ttl_days}} DAY
SETTINGS ttl_only_drop_parts = 1;
INSERT INTO type_spans
SELECT project_id, event_type, actor_key, min(occurred_at), max(occurred_at)
FROM events GROUP BY ALL;
INSERT INTO page_spans
SELECT project_id, path, actor_key, min(occurred_at), max(occurred_at)
FROM events WHERE event_type = 'page_view' GROUP BY ALL;
INSERT INTO type_hours
SELECT project_id, toStartOfHour(occurred_at), event_type, count()
FROM events GROUP BY ALL;
INSERT INTO path_hours
SELECT project_id, toStartOfHour(occurred_at), path, count()
FROM events WHERE event_type = 'page_view' GROUP BY ALL;
CREATE MATERIALIZED VIEW IF NOT EXISTS type_spans_mv TO type_spans AS
SELECT project_id, event_type,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM events GROUP BY project_id, event_type, actor_key;
CREATE MATERIALIZED VIEW IF NOT EXISTS page_spans_mv TO page_spans AS
SELECT project_id, path,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM events WHERE event_type = 'page_view' GROUP BY project_id, path, actor_key;
CREATE MATERIALIZED VIEW IF NOT EXISTS type_hours_mv TO type_hours AS
SELECT project_id, toStartOfHour(occurred_at) AS hour, event_type, count() AS events
FROM events GROUP BY project_id, hour, event_type;
CREATE MATERIALIZED VIEW IF NOT EXISTS path_hours_mv TO path_hours AS
SELECT project_id, toStartOfHour(occurred_at) AS hour, path, count() AS views
FROM events WHERE event_type = 'page_view' GROUP BY project_id, hour, path;
