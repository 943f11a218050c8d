-- What rendered a completed job, as its worker reported it (weights digest,
-- scheduler, dtype, device, software versions, the parameters used); NULL for
-- a job not completed or completed by a worker that reports none.
ALTER TABLE jobs.jobs
    ADD COLUMN provenance jsonb;
