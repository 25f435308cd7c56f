-- Membership by invitation: an owner invites an email address; the user
-- signed in with that address accepts, and membership starts then. At most
-- one open invitation per project and address (inviting again renews it).
CREATE TABLE invitations (
    invitation_id  uuid PRIMARY KEY,
    project_id     uuid NOT NULL REFERENCES projects (project_id) ON DELETE CASCADE,
    email          text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    role           text NOT NULL CHECK (role IN ('owner', 'viewer')),
    invited_by     uuid REFERENCES users (user_id) ON DELETE SET NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    accepted_at    timestamptz,
    accepted_by    uuid REFERENCES users (user_id) ON DELETE CASCADE,
    revoked_at     timestamptz
);
CREATE UNIQUE INDEX invitations_open ON invitations (project_id, lower(email))
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
CREATE INDEX invitations_email ON invitations (lower(email)) WHERE accepted_at IS NULL AND revoked_at IS NULL;
