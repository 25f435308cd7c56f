-- Person deletions (GDPR article 17), run as jobs by the export function
-- (pulse.core.erasure). A row is also the audit record of the request: who
-- asked, when, how many events were removed. The identifiers and hours a job
-- works on are kept only until it is done.
CREATE TABLE person_deletions (
    deletion_id     uuid PRIMARY KEY,
    project_id      uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    person_id       uuid NOT NULL,
    requested_by    text NOT NULL,
    suppress        boolean NOT NULL DEFAULT false,
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    stage           text NOT NULL DEFAULT 'requested' CHECK (stage IN ('requested', 'counted', 'deleted')),
    identifiers     text[],
    hours           timestamp[],
    page_hours      timestamp[],
    events_deleted  bigint,
    error           text,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX person_deletions_project ON person_deletions (project_id, requested_at);

-- The deleted events' ids while a job runs: their ledger rows go last.
CREATE TABLE person_deletion_events (
    deletion_id  uuid NOT NULL REFERENCES person_deletions (deletion_id) ON DELETE CASCADE,
    event_id     uuid NOT NULL,
    PRIMARY KEY (deletion_id, event_id)
);

-- Identifiers whose later events ingest drops (a deletion with suppress),
-- kept only as SHA-256 of project id and identifier.
CREATE TABLE suppressed_ids (
    project_id     uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    id_sha256      bytea NOT NULL,
    suppressed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, id_sha256)
);

-- Retention per project: events older than this many days are removed by
-- the maintenance job (pulse.core.erasure).
ALTER TABLE projects ADD COLUMN retention_days integer NOT NULL DEFAULT 365
    CHECK (retention_days BETWEEN 30 AND 2555);
ALTER TABLE projects ADD COLUMN retention_changed_at timestamptz NOT NULL DEFAULT now();
-- The cut a retention run is applying, until it has finished (a run that died
-- is resumed with the same cut).
ALTER TABLE projects ADD COLUMN retention_pending_cut timestamp;
