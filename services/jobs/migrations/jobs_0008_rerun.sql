-- The prompt template (id, version) whose enhancement an enhanced job rendered
-- ('' and 0 when none was used), and the job a re-run repeats (NULL for a job
-- submitted anew).
ALTER TABLE jobs.jobs
    ADD COLUMN enhancement_template_id text NOT NULL DEFAULT '',
    ADD COLUMN enhancement_template_version integer NOT NULL DEFAULT 0,
    ADD COLUMN rerun_of uuid;

-- What model a worker family runs now, for a re-run's check: the newest
-- provenance of a completed job, per job type.
CREATE INDEX jobs_completed_provenance ON jobs.jobs (job_type, completed_at DESC)
    WHERE state = 'completed' AND provenance IS NOT NULL;
