-- The jobs schema: every job, its outputs, its event history, and the outbox
-- that carries work and events to JetStream in the same transaction as the
-- change that produced them.

CREATE SCHEMA IF NOT EXISTS jobs;

CREATE TABLE jobs.jobs (
    id                   uuid PRIMARY KEY,
    user_id              uuid NOT NULL,
    request_id           text,
    job_type             text NOT NULL,
    state                text NOT NULL CHECK (state IN
                             ('queued', 'enhancing', 'running', 'completed', 'failed', 'cancelled')),
    prompt               text NOT NULL,
    enhanced_prompt      text NOT NULL DEFAULT '',
    negative_prompt      text NOT NULL DEFAULT '',
    seed                 bigint NOT NULL,
    num_images           integer NOT NULL,
    width                integer NOT NULL,
    height               integer NOT NULL,
    num_frames           integer NOT NULL,
    steps                integer NOT NULL,
    guidance_scale       real NOT NULL,
    reference_upload_id  text,
    reference_type       text,
    reference_strength   real,
    reference_bucket     text,
    reference_key        text,
    destination          text NOT NULL DEFAULT 'workspace' CHECK (destination IN ('workspace', 'library')),
    workspace_session_id uuid,
    progress_step        integer NOT NULL DEFAULT 0,
    progress_total       integer NOT NULL DEFAULT 0,
    progress_stage       text NOT NULL DEFAULT '',
    attempt              integer NOT NULL DEFAULT 0,
    cancel_requested     boolean NOT NULL DEFAULT false,
    error_code           text NOT NULL DEFAULT '',
    error_message        text NOT NULL DEFAULT '',
    enhancement_fallback boolean NOT NULL DEFAULT false,
    last_sequence        bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    completed_at         timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, request_id)
);

-- Listing a user's jobs newest first (keyset pages on created_at, id).
CREATE INDEX jobs_user_created ON jobs.jobs (user_id, created_at DESC, id DESC);
-- Counting a user's active jobs for the per-user limit.
CREATE INDEX jobs_user_active ON jobs.jobs (user_id)
    WHERE state IN ('queued', 'enhancing', 'running');

CREATE TABLE jobs.assets (
    job_id           uuid NOT NULL REFERENCES jobs.jobs (id) ON DELETE CASCADE,
    index            integer NOT NULL,
    user_id          uuid NOT NULL,
    bucket           text NOT NULL,
    key              text NOT NULL,
    content_type     text NOT NULL,
    width            integer NOT NULL DEFAULT 0,
    height           integer NOT NULL DEFAULT 0,
    seed             bigint NOT NULL DEFAULT 0,
    thumbnail_bucket text NOT NULL DEFAULT '',
    thumbnail_key    text NOT NULL DEFAULT '',
    size_bytes       bigint NOT NULL DEFAULT 0,
    num_frames       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, index)
);

CREATE TABLE jobs.job_events (
    job_id     uuid NOT NULL REFERENCES jobs.jobs (id) ON DELETE CASCADE,
    sequence   bigint NOT NULL,
    user_id    uuid NOT NULL,
    type       text NOT NULL,
    payload    bytea NOT NULL,  -- a serialized ourvidz.v1.JobEvent
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sequence)
);

CREATE TABLE jobs.outbox (
    id         bigserial PRIMARY KEY,
    subject    text NOT NULL,
    msg_id     text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relay as soon as a transaction that wrote to the outbox commits.
CREATE FUNCTION jobs.outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON jobs.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION jobs.outbox_notify();

-- Row level security: a user sees only their own rows; workers, admins and the
-- service itself see every row.
ALTER TABLE jobs.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs.assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs.job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs.outbox ENABLE ROW LEVEL SECURITY;

CREATE POLICY jobs_owner ON jobs.jobs
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (public.app_is_trusted() OR user_id = public.app_user_id());
CREATE POLICY assets_owner ON jobs.assets
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (public.app_is_trusted() OR user_id = public.app_user_id());
CREATE POLICY job_events_owner ON jobs.job_events
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (public.app_is_trusted() OR user_id = public.app_user_id());
-- Anyone's transaction may add to the outbox (a user's CreateJob does); only
-- trusted callers (the relay runs as "system") may read or delete from it.
CREATE POLICY outbox_insert ON jobs.outbox FOR INSERT WITH CHECK (true);
CREATE POLICY outbox_read ON jobs.outbox FOR SELECT USING (public.app_is_trusted());
CREATE POLICY outbox_lock ON jobs.outbox FOR UPDATE USING (public.app_is_trusted());  -- FOR UPDATE SKIP LOCKED
CREATE POLICY outbox_delete ON jobs.outbox FOR DELETE USING (public.app_is_trusted());

GRANT USAGE ON SCHEMA jobs TO ourvidz_jobs;
GRANT SELECT, INSERT, UPDATE ON jobs.jobs TO ourvidz_jobs;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs.assets TO ourvidz_jobs;
GRANT SELECT, INSERT ON jobs.job_events TO ourvidz_jobs;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs.outbox TO ourvidz_jobs;
GRANT USAGE ON SEQUENCE jobs.outbox_id_seq TO ourvidz_jobs;
