-- Users, project membership, refresh tokens, login back-off and rate-limit
-- counters. Passwords are stored as scrypt hashes with a per-user salt;
-- refresh tokens only as the SHA-256 of their 256 random bits.
CREATE TABLE users (
    user_id        uuid PRIMARY KEY,
    email          text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash  text NOT NULL,
    full_name      text,
    company        text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));

CREATE TABLE project_members (
    project_id  uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'viewer')),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

-- A family is one sign-in: every rotation stays in it, and presenting a
-- spent token revokes all of it. Refresh and sign-out lock the family row,
-- so they serialize per sign-in.
CREATE TABLE refresh_families (
    family_id   uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX refresh_families_user ON refresh_families (user_id);

CREATE TABLE refresh_tokens (
    token_sha256  bytea PRIMARY KEY,
    family_id     uuid NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens USING brin (expires_at);

-- Failed sign-ins per (lower-cased) email, whether or not the account exists.
CREATE TABLE login_failures (
    email_lower   text PRIMARY KEY,
    failures      integer NOT NULL,
    last_at       timestamptz NOT NULL,
    locked_until  timestamptz
);

-- Fixed-window counters shared by every replica: one row per (bucket, window).
-- UNLOGGED: no WAL per request (a crash only forgets the current windows).
CREATE UNLOGGED TABLE rate_counters (
    bucket      text NOT NULL,
    window_idx  bigint NOT NULL,
    hits        integer NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (bucket, window_idx)
);
CREATE INDEX rate_counters_expires_at ON rate_counters USING brin (expires_at);
