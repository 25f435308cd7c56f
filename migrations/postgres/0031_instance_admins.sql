-- Instance admins, by user id, granted by an operator (`pulse admin grant
-- USER_ID`); an email address alone never makes anyone an admin.
CREATE TABLE instance_admins (
    user_id     uuid PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    granted_at  timestamptz NOT NULL DEFAULT now()
);
