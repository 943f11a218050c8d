-- Policies bind the workspace service's own login role, and hold the tables'
-- owner too (FORCE). A trusted transaction ("system": the filer, the cleaner)
-- is one whose login role was granted that app role (public.app_role()).
-- depends: workspace_0001_schema common_0002_role_grants

ALTER TABLE workspace.sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace.items FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace.library_assets FORCE ROW LEVEL SECURITY;
ALTER TABLE workspace.uploads FORCE ROW LEVEL SECURITY;

DROP POLICY sessions_owner ON workspace.sessions;
DROP POLICY items_owner ON workspace.items;
DROP POLICY library_assets_owner ON workspace.library_assets;
DROP POLICY uploads_owner ON workspace.uploads;

CREATE POLICY sessions_owner ON workspace.sessions TO ourvidz_workspace
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR ((SELECT public.app_is_trusted()) AND public.app_user_id() IS NULL));
CREATE POLICY items_owner ON workspace.items TO ourvidz_workspace
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR ((SELECT public.app_is_trusted()) AND public.app_user_id() IS NULL));
CREATE POLICY library_assets_owner ON workspace.library_assets TO ourvidz_workspace
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR ((SELECT public.app_is_trusted()) AND public.app_user_id() IS NULL));
CREATE POLICY uploads_owner ON workspace.uploads TO ourvidz_workspace
    USING ((SELECT public.app_is_trusted()) OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR ((SELECT public.app_is_trusted()) AND public.app_user_id() IS NULL));
