-- Jobs holds queued jobs and publishes a job's task only when a worker of its
-- family can take it (services/jobs/dispatch.py), choosing fairly between
-- users. `dispatched_at` is when its task went to the queue (NULL: still
-- waiting in Jobs); `batch_id` is the job whose id names the task of a batch
-- the job was published in (NULL: published alone); `trace_headers` the trace
-- context of the call that queued it, which its task carries when it is
-- published later. An outbox row may carry headers of its own (a batch says
-- so in `Ourvidz-Task`).
-- depends: jobs_0006_provenance

ALTER TABLE jobs.jobs
    ADD COLUMN dispatched_at timestamptz,
    ADD COLUMN batch_id uuid,
    ADD COLUMN trace_headers jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE jobs.outbox
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb;

-- The dispatcher's candidates: queued jobs not yet on the queue.
CREATE INDEX jobs_waiting_dispatch ON jobs.jobs (job_type, created_at)
    WHERE state = 'queued' AND dispatched_at IS NULL;
-- Jobs on the queue or running, per user (each user's jobs in flight).
CREATE INDEX jobs_in_flight ON jobs.jobs (job_type, user_id)
    WHERE state IN ('queued', 'running') AND dispatched_at IS NOT NULL;

-- Jobs queued or running before this version had their task published when
-- they were queued. The policies bind the service's login role only, and FORCE
-- holds the owner (who runs this) to them: lifted for the backfill, in this
-- transaction.
ALTER TABLE jobs.jobs NO FORCE ROW LEVEL SECURITY;
UPDATE jobs.jobs SET dispatched_at = updated_at WHERE state IN ('queued', 'running');
ALTER TABLE jobs.jobs FORCE ROW LEVEL SECURITY;
