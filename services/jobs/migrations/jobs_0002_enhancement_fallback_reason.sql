-- Why an enhanced job went on with its original prompt (the enhancer's reason,
-- or the enhancement timeout's); empty when the enhancement was used.
ALTER TABLE jobs.jobs
    ADD COLUMN enhancement_fallback_reason text NOT NULL DEFAULT '';

-- The enhancement timeout's sweep: jobs still enhancing, oldest first.
CREATE INDEX jobs_enhancing_created ON jobs.jobs (created_at)
    WHERE state = 'enhancing';
