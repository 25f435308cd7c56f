-- Identity (pulse.core.persons): for each identifier whose person's primary
-- identifier is another one, the primary's key (the actor_key that identifier
-- has). Every unique-user figure counts
-- ifNull(joinGetOrNull('person_overrides', 'person_key', project_id, actor_key), actor_key).
-- A Join table is an in-memory hash table kept on disk: an insert is visible
-- to the next query, and with join_any_take_last_row the last row written for
-- a key is the one read (persist writes under the project's identity lock, so
-- the last written is the newest state). Postgres (persons, person_ids) is
-- the truth; these rows are rewritten from it.
CREATE TABLE IF NOT EXISTS person_overrides (
    project_id  UUID,
    actor_key   UInt128,
    person_key  UInt128
)
ENGINE = Join(ANY, LEFT, project_id, actor_key)
SETTINGS join_any_take_last_row = 1;
-- Person properties ($set, $set_once, identify traits) by person key, for
-- segments on person.<key>; the newest version of a person's row counts.
CREATE TABLE IF NOT EXISTS person_properties (
    project_id  UUID,
    person_key  UInt128,
    properties  String,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, person_key);
