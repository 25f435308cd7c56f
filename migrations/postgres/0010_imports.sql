-- One row per file imported into a project, by the SHA-256 of its content:
-- the same file again is answered as a duplicate. See pulse/core/importing.py.
CREATE TABLE imports (
    project_id   uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    rows         bigint NOT NULL,
    accepted     bigint NOT NULL,
    rejected     bigint NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, sha256)
);
