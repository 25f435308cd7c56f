-- session_spans, per session: also the first and last time of its events from
-- each country (a session's events may come from several). The overview with
-- a country segment counts the sessions whose span in that country reaches
-- into the range, as the overview without one counts sessions (pulse.core.rollups);
-- it read the events table before (the overview with country:DE over a year
-- of 10M events: 241 ms, 77 ms this way). Rows written before this migration
-- get their countries from the backfill: a session's rows merge, min and max
-- per country.
ALTER TABLE session_spans ADD COLUMN IF NOT EXISTS
    country_first SimpleAggregateFunction(minMap, Map(String, DateTime64(3, 'UTC')));
ALTER TABLE session_spans ADD COLUMN IF NOT EXISTS
    country_last SimpleAggregateFunction(maxMap, Map(String, DateTime64(3, 'UTC')));
ALTER TABLE session_spans_mv MODIFY QUERY
SELECT project_id, session_id, min(occurred_at) AS first_at, max(occurred_at) AS last_at,
       minMap(map(country, occurred_at)) AS country_first, maxMap(map(country, occurred_at)) AS country_last
FROM events WHERE bot = 0 AND session_id != '' GROUP BY project_id, session_id;
INSERT INTO session_spans
SELECT project_id, session_id, min(occurred_at), max(occurred_at),
       minMap(map(country, occurred_at)), maxMap(map(country, occurred_at))
FROM events WHERE bot = 0 AND session_id != '' GROUP BY ALL;
