-- Members of static cohorts (pulse.core.cohorts): the key of each listed
-- identifier, or of each person a funnel step held; a query resolves each
-- key to its person through person_overrides. Postgres (cohorts) says which
-- cohorts exist; rows of a deleted or never committed cohort are never read.
CREATE TABLE IF NOT EXISTS cohort_members (
    project_id  UUID,
    cohort_id   UUID,
    actor_key   UInt128
)
ENGINE = ReplacingMergeTree
ORDER BY (project_id, cohort_id, actor_key);
