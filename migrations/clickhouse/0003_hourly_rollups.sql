-- Hourly rollups kept current by materialized views on every insert into
-- events (persist inserts each event once; the ledger guarantees it).
-- actor_hours: per hour, country and user, the event count;
-- actor_type_hours: the same per event type; page_hours: page_view events
-- per path. Unique-user answers
-- over whole hours (ranges and day/week/month buckets in time zones whose
-- offset is a whole number of hours) read these instead of every event;
-- everything else reads events, which stays the reference answer.
CREATE TABLE IF NOT EXISTS actor_hours (
    project_id  UUID,
    hour        DateTime('UTC'),
    country     LowCardinality(String),
    actor_key   UInt128,
    events      UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, country, actor_key)
TTL hour + INTERVAL {{events_ttl_days}} DAY
SETTINGS ttl_only_drop_parts = 1;
CREATE TABLE IF NOT EXISTS actor_type_hours (
    project_id  UUID,
    hour        DateTime('UTC'),
    event_type  LowCardinality(String),
    country     LowCardinality(String),
    actor_key   UInt128,
    events      UInt64
)
ENGINE = SummingMergeTree(events)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, event_type, country, actor_key)
TTL hour + INTERVAL {{events_ttl_days}} DAY
SETTINGS ttl_only_drop_parts = 1;
CREATE TABLE IF NOT EXISTS page_hours (
    project_id  UUID,
    hour        DateTime('UTC'),
    path        String,
    country     LowCardinality(String),
    actor_key   UInt128,
    views       UInt64
)
ENGINE = SummingMergeTree(views)
PARTITION BY toYYYYMM(hour)
ORDER BY (project_id, hour, path, country, actor_key)
TTL hour + INTERVAL {{events_ttl_days}} DAY
SETTINGS ttl_only_drop_parts = 1;
INSERT INTO actor_type_hours
SELECT project_id, toStartOfHour(occurred_at), event_type, country, actor_key, count()
FROM events GROUP BY ALL;
INSERT INTO actor_hours
SELECT project_id, toStartOfHour(occurred_at), country, actor_key, count()
FROM events GROUP BY ALL;
INSERT INTO page_hours
SELECT project_id, toStartOfHour(occurred_at), path, country, actor_key, count()
FROM events WHERE event_type = 'page_view' GROUP BY ALL;
CREATE MATERIALIZED VIEW IF NOT EXISTS actor_hours_mv TO actor_hours AS
SELECT project_id, toStartOfHour(occurred_at) AS hour, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS events
FROM events GROUP BY project_id, hour, country, actor_key;
CREATE MATERIALIZED VIEW IF NOT EXISTS actor_type_hours_mv TO actor_type_hours AS
SELECT project_id, toStartOfHour(occurred_at) AS hour, event_type, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS events
FROM events GROUP BY project_id, hour, event_type, country, actor_key;
CREATE MATERIALIZED VIEW IF NOT EXISTS page_hours_mv TO page_hours AS
SELECT project_id, toStartOfHour(occurred_at) AS hour, path, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS views
FROM events WHERE event_type = 'page_view' GROUP BY project_id, hour, path, country, actor_key;
