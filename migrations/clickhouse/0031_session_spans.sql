-- session_spans: per session (a non-empty session_id), the first and last time
-- of its events, bots left out, kept by a view on every insert into events.
-- The overview's sessions over a range that starts at or before the project's
-- first event, or ends after its last one (every range up to today), are the
-- sessions whose span reaches into it (pulse.core.rollups): merged into one
-- part, one row per session, counted without a distinct count (over 10M
-- events, a distinct count of their 1M session ids took ~630 ms of CPU).
-- The view exists before the backfill runs: an insert meanwhile is written by
-- both, and a span's min and max are the same however often a row is written.
CREATE TABLE IF NOT EXISTS session_spans (
    project_id  UUID,
    session_id  String,
    first_at    SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_at     SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (project_id, session_id)
TTL toDateTime(last_at) + INTERVAL {{events_ttl_days}} DAY
SETTINGS min_age_to_force_merge_seconds = 60;
CREATE MATERIALIZED VIEW IF NOT EXISTS session_spans_mv TO session_spans AS
SELECT project_id, session_id, min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM events WHERE bot = 0 AND session_id != '' GROUP BY project_id, session_id;
INSERT INTO session_spans
SELECT project_id, session_id, min(occurred_at), max(occurred_at)
FROM events WHERE bot = 0 AND session_id != '' GROUP BY ALL;
