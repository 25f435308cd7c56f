-- Projects own everything; API keys reach exactly one project.
CREATE TABLE projects (
    project_id  uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The secret is never stored: only its SHA-256 (keys carry 190 random bits).
CREATE TABLE api_keys (
    key_id        uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    name          text NOT NULL,
    prefix        text NOT NULL UNIQUE,
    secret_sha256 bytea NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_project ON api_keys (project_id);
