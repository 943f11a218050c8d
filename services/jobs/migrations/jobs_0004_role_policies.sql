-- Policies bind the jobs service's own login role, and hold the tables' owner
-- too (FORCE). Whether a transaction is trusted (worker, system) is decided
-- by public.app_role(), which allows only the app roles granted to the login
-- role (public.app_role_grants); evaluated once per statement.
-- depends: jobs_0003_attempts_and_heartbeats common_0002_role_grants

ALTER TABLE jobs.jobs FORCE ROW LEVEL SECURITY;
ALTER TABLE jobs.assets FORCE ROW LEVEL SECURITY;
ALTER TABLE jobs.job_events FORCE ROW LEVEL SECURITY;

DROP POLICY jobs_owner ON jobs.jobs;
DROP POLICY assets_owner ON jobs.assets;
DROP POLICY job_events_owner ON jobs.job_events;
DROP POLICY outbox_insert ON jobs.outbox;
DROP POLICY outbox_read ON jobs.outbox;
DROP POLICY outbox_lock ON jobs.outbox;
DROP POLICY outbox_delete ON jobs.outbox;

CREATE POLICY jobs_owner ON jobs.jobs TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id());
CREATE POLICY assets_owner ON jobs.assets TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id());
CREATE POLICY job_events_owner ON jobs.job_events TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id());
-- Any of the service's transactions may add to the outbox (a user's CreateJob
-- does); only trusted ones (the relay runs as "system") read or delete from it.
CREATE POLICY outbox_insert ON jobs.outbox FOR INSERT TO ourvidz_jobs WITH CHECK (true);
CREATE POLICY outbox_read ON jobs.outbox FOR SELECT TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()));
CREATE POLICY outbox_lock ON jobs.outbox FOR UPDATE TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()));  -- FOR UPDATE SKIP LOCKED
CREATE POLICY outbox_delete ON jobs.outbox FOR DELETE TO ourvidz_jobs
    USING ((SELECT public.app_is_trusted()));
