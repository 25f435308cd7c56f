-- Every API.md event field, plus received_at and the ingest batch id.
-- Partitioned by month; ordered for per-project time-range scans; rows older
-- than PULSE_EVENTS_TTL_DAYS are dropped at merge time.
-- The Postgres ledger is what keeps events unique; ReplacingMergeTree on the
-- same key is a second guard that acts only at merges.
CREATE TABLE IF NOT EXISTS events (
    project_id    UUID,
    event_id      UUID,
    event_type    LowCardinality(String),
    user_id       String,
    anonymous_id  String,
    actor         String MATERIALIZED if(user_id != '', user_id, anonymous_id),
    session_id    String,
    occurred_at   DateTime64(3, 'UTC'),
    received_at   DateTime64(3, 'UTC'),
    properties    String,
    path          String,
    url           String,
    referrer      String,
    title         String,
    user_agent    String,
    ip            String,
    locale        LowCardinality(String),
    country       LowCardinality(String),
    batch_id      UUID
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (project_id, toDate(occurred_at), event_type, event_id)
TTL toDateTime(occurred_at) + INTERVAL {{events_ttl_days}} DAY
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;
