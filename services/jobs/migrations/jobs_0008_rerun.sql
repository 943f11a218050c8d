-- The prompt template (id, version) whose enhancement an enhanced job rendered
-- ('' and 0 when none was used), and the job a re-run repeats (NULL for a job
-- submitted anew).
-- depends: jobs_0007_dispatch

ALTER TABLE jobs.jobs
    ADD COLUMN enhancement_template_id text NOT NULL DEFAULT '',
    ADD COLUMN enhancement_template_version integer NOT NULL DEFAULT 0,
    ADD COLUMN rerun_of uuid;

-- A job type's recently completed jobs: what model a worker family runs now,
-- for a re-run's check (the newest provenance), and the measured job times of
-- the queue estimates.
CREATE INDEX jobs_completed_by_type ON jobs.jobs (job_type, completed_at DESC)
    WHERE state = 'completed';
