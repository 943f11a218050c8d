-- The trace context of the change that wrote an outbox row (the W3C
-- traceparent and tracestate headers, as the propagator wrote them), which
-- the relay publishes as the message's headers: a job's task and events stay
-- in the trace of the request that caused them. Empty when there was none.
-- depends: jobs_0004_role_policies

ALTER TABLE jobs.outbox
    ADD COLUMN trace_headers jsonb NOT NULL DEFAULT '{}'::jsonb;
