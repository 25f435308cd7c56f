-- A person's deletion also rebuilds the span rows of the sessions their events
-- were in (ClickHouse session_spans): their ids are kept with the job, as its
-- hours are, from the count until the job is done.
ALTER TABLE person_deletions ADD COLUMN sessions text[];
