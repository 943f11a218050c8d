-- Identity lives at the edge: users and their refresh tokens.
-- depends: common_0001_caller
CREATE SCHEMA IF NOT EXISTS identity;

CREATE TABLE identity.users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique whatever their case.
CREATE UNIQUE INDEX users_email_lower ON identity.users (lower(email));

CREATE TABLE identity.refresh_tokens (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES identity.users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,  -- sha256 hex of the opaque token; the token itself is never stored
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_user ON identity.refresh_tokens (user_id);

ALTER TABLE identity.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.refresh_tokens ENABLE ROW LEVEL SECURITY;

-- A user sees their own row; the gateway acting for itself (signup, login,
-- refresh: before an identity exists) runs as the trusted "system" role.
CREATE POLICY users_own ON identity.users
    USING (id = public.app_user_id() OR public.app_is_trusted())
    WITH CHECK (id = public.app_user_id() OR public.app_is_trusted());
CREATE POLICY refresh_tokens_own ON identity.refresh_tokens
    USING (user_id = public.app_user_id() OR public.app_is_trusted())
    WITH CHECK (user_id = public.app_user_id() OR public.app_is_trusted());

GRANT USAGE ON SCHEMA identity TO ourvidz_gateway;
GRANT SELECT, INSERT, UPDATE, DELETE ON identity.users, identity.refresh_tokens TO ourvidz_gateway;
