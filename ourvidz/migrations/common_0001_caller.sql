-- The caller of the current transaction, as set by ourvidz.db.Database.tx().
-- Row level security policies of every service key on these two functions.
CREATE OR REPLACE FUNCTION public.app_user_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION public.app_role() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(nullif(current_setting('app.role', true), ''), 'user') $$;

-- True when the caller may see every row: a worker, an admin or the service itself.
CREATE OR REPLACE FUNCTION public.app_is_trusted() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT public.app_role() IN ('worker', 'admin', 'system') $$;
