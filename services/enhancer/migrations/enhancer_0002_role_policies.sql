-- Policies bind the enhancer's own login role; the user-owned tables
-- (enhancements, ratings) hold their owner too (FORCE). Trusted transactions
-- (admin, worker, system) are those whose login role was granted that app
-- role (public.app_role()).
-- depends: enhancer_0001_schema common_0002_role_grants

ALTER TABLE enhancer.enhancements FORCE ROW LEVEL SECURITY;
ALTER TABLE enhancer.enhancement_ratings FORCE ROW LEVEL SECURITY;

DROP POLICY templates_read ON enhancer.prompt_templates;
DROP POLICY templates_insert ON enhancer.prompt_templates;
DROP POLICY templates_update ON enhancer.prompt_templates;
DROP POLICY prompt_tests_trusted ON enhancer.prompt_tests;
DROP POLICY enhancements_owner ON enhancer.enhancements;
DROP POLICY enhancement_ratings_owner ON enhancer.enhancement_ratings;

CREATE POLICY templates_read ON enhancer.prompt_templates FOR SELECT TO ourvidz_enhancer
    USING (true);
CREATE POLICY templates_insert ON enhancer.prompt_templates FOR INSERT TO ourvidz_enhancer
    WITH CHECK ((SELECT public.app_is_trusted()));
CREATE POLICY templates_update ON enhancer.prompt_templates FOR UPDATE TO ourvidz_enhancer
    USING ((SELECT public.app_is_trusted())) WITH CHECK ((SELECT public.app_is_trusted()));
CREATE POLICY prompt_tests_trusted ON enhancer.prompt_tests TO ourvidz_enhancer
    USING ((SELECT public.app_is_trusted())) WITH CHECK ((SELECT public.app_is_trusted()));
CREATE POLICY enhancements_owner ON enhancer.enhancements TO ourvidz_enhancer
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id());
CREATE POLICY enhancement_ratings_owner ON enhancer.enhancement_ratings TO ourvidz_enhancer
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id());
