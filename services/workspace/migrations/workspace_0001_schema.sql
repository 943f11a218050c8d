-- Workspace sessions and items, the permanent library and reference uploads.
-- Every table is owned by a user and guarded by row level security: a user's
-- transaction sees and writes only its own rows; a trusted transaction (the
-- service itself, "system") sees every row, and when it names a user (the
-- filer acting for an event's owner) it may write only that user's rows.

CREATE SCHEMA IF NOT EXISTS workspace;

CREATE TABLE workspace.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    name text NOT NULL DEFAULT '',
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
-- At most one active session per user.
CREATE UNIQUE INDEX sessions_one_active ON workspace.sessions (user_id) WHERE active;
CREATE INDEX sessions_user_created ON workspace.sessions (user_id, created_at DESC, id DESC);
CREATE INDEX sessions_idle ON workspace.sessions (last_activity_at) WHERE deleted_at IS NULL;

CREATE TABLE workspace.library_assets (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    job_id text NOT NULL,
    index integer NOT NULL,
    job_type text NOT NULL DEFAULT '',
    content_type text NOT NULL,
    title text NOT NULL,
    prompt text NOT NULL DEFAULT '',
    seed bigint NOT NULL DEFAULT 0,
    width integer NOT NULL DEFAULT 0,
    height integer NOT NULL DEFAULT 0,
    bucket text NOT NULL,
    key text NOT NULL,
    thumbnail_bucket text NOT NULL DEFAULT '',
    thumbnail_key text NOT NULL DEFAULT '',
    size_bytes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, job_id, index)
);
CREATE INDEX library_assets_user_created ON workspace.library_assets (user_id, created_at DESC, id DESC);
CREATE INDEX library_assets_object ON workspace.library_assets (bucket, key);
CREATE INDEX library_assets_thumbnail ON workspace.library_assets (thumbnail_bucket, thumbnail_key);

CREATE TABLE workspace.items (
    id uuid PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES workspace.sessions (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    job_id text NOT NULL,
    index integer NOT NULL,
    job_type text NOT NULL DEFAULT '',
    content_type text NOT NULL,
    prompt text NOT NULL DEFAULT '',
    seed bigint NOT NULL DEFAULT 0,
    width integer NOT NULL DEFAULT 0,
    height integer NOT NULL DEFAULT 0,
    bucket text NOT NULL,
    key text NOT NULL,
    thumbnail_bucket text NOT NULL DEFAULT '',
    thumbnail_key text NOT NULL DEFAULT '',
    size_bytes bigint NOT NULL DEFAULT 0,
    library_asset_id uuid REFERENCES workspace.library_assets (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, index)
);
CREATE INDEX items_session_created ON workspace.items (session_id, created_at DESC, job_id DESC, index);
CREATE INDEX items_object ON workspace.items (bucket, key);
CREATE INDEX items_thumbnail ON workspace.items (thumbnail_bucket, thumbnail_key);
CREATE INDEX items_library_asset ON workspace.items (library_asset_id);

CREATE TABLE workspace.uploads (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    bucket text NOT NULL,
    key text NOT NULL,
    content_type text NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    size_bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_user ON workspace.uploads (user_id, created_at DESC);

ALTER TABLE workspace.sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace.items ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace.library_assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE workspace.uploads ENABLE ROW LEVEL SECURITY;

CREATE POLICY sessions_owner ON workspace.sessions
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR (public.app_is_trusted() AND public.app_user_id() IS NULL));
CREATE POLICY items_owner ON workspace.items
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR (public.app_is_trusted() AND public.app_user_id() IS NULL));
CREATE POLICY library_assets_owner ON workspace.library_assets
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR (public.app_is_trusted() AND public.app_user_id() IS NULL));
CREATE POLICY uploads_owner ON workspace.uploads
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (user_id = public.app_user_id()
                OR (public.app_is_trusted() AND public.app_user_id() IS NULL));

GRANT USAGE ON SCHEMA workspace TO ourvidz_workspace;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA workspace TO ourvidz_workspace;
