-- Bots (pulse.core.bots): ingest marks events whose user agent is a known
-- crawler's or headless browser's. Stats leave them out unless asked
-- (include_bots=true, which reads the events table): the rollups and span
-- tables count only events that are not marked, from now on (no event was
-- marked before this column existed).
ALTER TABLE events ADD COLUMN IF NOT EXISTS bot UInt8 DEFAULT 0;
ALTER TABLE actor_hours_mv MODIFY QUERY
SELECT project_id, toStartOfHour(occurred_at) AS hour, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS events
FROM events WHERE bot = 0 GROUP BY project_id, hour, country, actor_key;
ALTER TABLE actor_type_hours_mv MODIFY QUERY
SELECT project_id, toStartOfHour(occurred_at) AS hour, event_type, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS events
FROM events WHERE bot = 0 GROUP BY project_id, hour, event_type, country, actor_key;
ALTER TABLE page_hours_mv MODIFY QUERY
SELECT project_id, toStartOfHour(occurred_at) AS hour, path, country,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       count() AS views
FROM events WHERE event_type = 'page_view' AND bot = 0 GROUP BY project_id, hour, path, country, actor_key;
ALTER TABLE type_spans_mv MODIFY QUERY
SELECT project_id, event_type,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM events WHERE bot = 0 GROUP BY project_id, event_type, actor_key;
ALTER TABLE page_spans_mv MODIFY QUERY
SELECT project_id, path,
       reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id))) AS actor_key,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at
FROM events WHERE event_type = 'page_view' AND bot = 0 GROUP BY project_id, path, actor_key;
ALTER TABLE type_hours_mv MODIFY QUERY
SELECT project_id, toStartOfHour(occurred_at) AS hour, event_type, count() AS events
FROM events WHERE bot = 0 GROUP BY project_id, hour, event_type;
ALTER TABLE path_hours_mv MODIFY QUERY
SELECT project_id, toStartOfHour(occurred_at) AS hour, path, count() AS views
FROM events WHERE event_type = 'page_view' AND bot = 0 GROUP BY project_id, hour, path;
