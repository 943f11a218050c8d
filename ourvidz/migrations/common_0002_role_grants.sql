-- The caller's role (app.role) is no longer taken on the caller's word: the
-- database login role a service connects as decides which app roles its
-- transactions may assume. "user" (own rows only) is open to every role;
-- anything else must be granted here. app_role() raises when a transaction
-- asserts a role its login role was not granted, so `set_config('app.role',
-- 'system', true)` from the gateway's connection reads nothing more.
-- depends: common_0001_caller

CREATE TABLE public.app_role_grants (
    db_role  name NOT NULL,
    app_role text NOT NULL CHECK (app_role IN ('user', 'worker', 'admin', 'system')),
    PRIMARY KEY (db_role, app_role)
);

-- What each service's code asks for (Database.tx(role=...)):
--   gateway:   user only (login and refresh go through the SECURITY DEFINER
--              functions of the identity schema);
--   jobs:      user (a user's calls), worker (worker callbacks), system (the
--              relay, the reconciler, the enhancement sweeper);
--   workspace: user, system (the filer, the cleaner);
--   enhancer:  user, worker (the enhance stage), admin (templates), system
--              (the template cache).
INSERT INTO public.app_role_grants (db_role, app_role) VALUES
    ('ourvidz_gateway', 'user'),
    ('ourvidz_jobs', 'user'),
    ('ourvidz_jobs', 'worker'),
    ('ourvidz_jobs', 'system'),
    ('ourvidz_workspace', 'user'),
    ('ourvidz_workspace', 'system'),
    ('ourvidz_enhancer', 'user'),
    ('ourvidz_enhancer', 'worker'),
    ('ourvidz_enhancer', 'admin'),
    ('ourvidz_enhancer', 'system');

REVOKE ALL ON public.app_role_grants FROM PUBLIC;
-- Read by app_role(), which runs with the caller's rights; nobody but the
-- owner (migrations) changes it.
GRANT SELECT ON public.app_role_grants
    TO ourvidz_gateway, ourvidz_jobs, ourvidz_workspace, ourvidz_enhancer;

CREATE OR REPLACE FUNCTION public.app_role() RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    asserted text := coalesce(nullif(current_setting('app.role', true), ''), 'user');
BEGIN
    IF asserted = 'user' OR EXISTS (
        SELECT 1 FROM public.app_role_grants g
        WHERE g.db_role = current_user AND g.app_role = asserted
    ) THEN
        RETURN asserted;
    END IF;
    RAISE EXCEPTION 'database role % may not act as app role "%"', current_user, asserted
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- Nobody but the owner creates objects in the shared schema (PostgreSQL 15
-- and later already default to this).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
