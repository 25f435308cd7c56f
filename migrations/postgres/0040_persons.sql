-- Persons (pulse.core.persons): identifiers linked by identify/alias calls.
-- An identifier with no row here is a person of its own. person_id is
-- uuid5(project_id, primary_id); the primary identifier's key is the person's
-- key in ClickHouse.
CREATE TABLE persons (
    project_id  uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    person_id   uuid NOT NULL,
    primary_id  text NOT NULL,
    identified  boolean NOT NULL DEFAULT false,
    properties  jsonb NOT NULL DEFAULT '{}',
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, person_id)
);

CREATE TABLE person_ids (
    project_id   uuid NOT NULL,
    distinct_id  text NOT NULL,
    person_id    uuid NOT NULL,
    PRIMARY KEY (project_id, distinct_id),
    FOREIGN KEY (project_id, person_id) REFERENCES persons (project_id, person_id) ON DELETE CASCADE
);
CREATE INDEX person_ids_person ON person_ids (project_id, person_id);

-- Versions of person rows, one sequence for all (the newest wins in ClickHouse).
CREATE SEQUENCE person_version;

-- Batches whose identity operations were applied: a redelivery does not apply
-- them again (it only rewrites the ClickHouse side). Trimmed with the ledger.
CREATE TABLE person_batches (
    batch_id    uuid PRIMARY KEY,
    project_id  uuid NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_batches_applied_at ON person_batches USING brin (applied_at);

-- Links refused because both persons were identified (not forced).
CREATE TABLE person_refusals (
    project_id   uuid NOT NULL,
    anonymous_id text NOT NULL,
    user_id      text NOT NULL,
    batch_id     uuid NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_refusals_project ON person_refusals (project_id, refused_at);
