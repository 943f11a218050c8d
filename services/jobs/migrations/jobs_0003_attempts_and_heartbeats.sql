-- Attempts counted by Jobs, not by JetStream deliveries, and the worker's
-- heartbeat, so the reconciler can tell a job whose worker went silent.
--
-- start_token: "<task stream sequence>:<delivery>" of the start that made the
--   job running; the same token again is the same start (a lost answer).
-- heartbeat_at: the last sign of life of the worker that holds the job
--   (StartJob, ReportProgress, Heartbeat).
-- checked_at: when the reconciler last confirmed a queued job's task.
ALTER TABLE jobs.jobs
    ADD COLUMN start_token  text NOT NULL DEFAULT '',
    ADD COLUMN heartbeat_at timestamptz,
    ADD COLUMN checked_at   timestamptz;

-- The reconciler's scans: queued jobs by when they were last confirmed, and
-- running jobs by their last heartbeat.
CREATE INDEX jobs_queued_checked ON jobs.jobs (checked_at NULLS FIRST, updated_at)
    WHERE state = 'queued';
CREATE INDEX jobs_running_heartbeat ON jobs.jobs (heartbeat_at NULLS FIRST)
    WHERE state = 'running';
