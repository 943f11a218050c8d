-- The gateway acts only as "user": each transaction sees the one user it
-- names (app.user_id). The two lookups that cannot be keyed by a user — a
-- login by e-mail and a refresh by token hash — are narrow SECURITY DEFINER
-- functions that return one row for the exact key they are given, which only
-- ourvidz_gateway may call.
-- depends: gateway_0001_identity common_0002_role_grants

ALTER TABLE identity.users FORCE ROW LEVEL SECURITY;
ALTER TABLE identity.refresh_tokens FORCE ROW LEVEL SECURITY;

DROP POLICY users_own ON identity.users;
DROP POLICY refresh_tokens_own ON identity.refresh_tokens;

CREATE POLICY users_gateway ON identity.users TO ourvidz_gateway
    USING (id = public.app_user_id())
    WITH CHECK (id = public.app_user_id());
CREATE POLICY refresh_tokens_gateway ON identity.refresh_tokens TO ourvidz_gateway
    USING (user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id());

-- The owner (the role that runs migrations, and so owns the functions below)
-- is held to row level security too (FORCE); it sees every row, as the
-- functions need. It could switch row level security off anyway.
CREATE POLICY users_owner ON identity.users TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY refresh_tokens_owner ON identity.refresh_tokens TO CURRENT_USER
    USING (true) WITH CHECK (true);

-- Only the columns the gateway changes: a user's password hash (rehash on
-- login) and a refresh token's revocation; never a role, never a delete.
REVOKE UPDATE, DELETE ON identity.users, identity.refresh_tokens FROM ourvidz_gateway;
GRANT UPDATE (password_hash) ON identity.users TO ourvidz_gateway;
GRANT UPDATE (revoked_at) ON identity.refresh_tokens TO ourvidz_gateway;

-- Login: the account with this e-mail (any case), with its password hash.
CREATE FUNCTION identity.login_candidate(p_email text)
    RETURNS TABLE (id uuid, email text, role text, password_hash text, created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT u.id, u.email, u.role, u.password_hash, u.created_at
        FROM identity.users u
        WHERE lower(u.email) = lower(p_email)
    $$;

-- Refresh: the token row with this hash and its user, locked for the rest
-- of the caller's transaction so two concurrent refreshes of one token
-- cannot both succeed.
CREATE FUNCTION identity.refresh_token_for_update(p_token_hash text)
    RETURNS TABLE (id uuid, user_id uuid, expires_at timestamptz, revoked_at timestamptz,
                   email text, role text)
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT t.id, t.user_id, t.expires_at, t.revoked_at, u.email, u.role
        FROM identity.refresh_tokens t JOIN identity.users u ON u.id = t.user_id
        WHERE t.token_hash = p_token_hash
        FOR UPDATE OF t
    $$;

REVOKE ALL ON FUNCTION identity.login_candidate(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION identity.refresh_token_for_update(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity.login_candidate(text) TO ourvidz_gateway;
GRANT EXECUTE ON FUNCTION identity.refresh_token_for_update(text) TO ourvidz_gateway;
