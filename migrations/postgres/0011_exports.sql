-- Asynchronous export jobs (POST /v1/exports): requested, run by the export
-- function on a dev.pulse.export.requested CloudEvent, then downloadable.
CREATE TABLE exports (
    export_id    uuid PRIMARY KEY,
    project_id   uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    format       text NOT NULL CHECK (format IN ('csv', 'json', 'ndjson', 'parquet')),
    params       jsonb NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    rows         bigint,
    bytes        bigint,
    file_name    text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX exports_project ON exports (project_id, created_at);
