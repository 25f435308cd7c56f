-- Cohorts (pulse.core.cohorts): named sets of persons per project. A static
-- cohort's members are in ClickHouse (cohort_members), written before its row
-- here; a behavioural one is its definition, evaluated at each query.
CREATE TABLE cohorts (
    cohort_id   uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('static', 'behavioural')),
    definition  jsonb,
    members     integer,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cohorts_project ON cohorts (project_id, created_at);
