-- Abuse limits at the edge, shared by every gateway replica: failed sign-in
-- counts and lock-outs, request rates (sign-ups, job submissions) and leases of
-- open event streams. Only the gateway acting for itself ("system") reads or
-- writes these rows.
-- depends: gateway_0001_identity

-- Sign-in attempts per key ("account:<email>", "address:<ip>"). An attempt is
-- counted when it starts and taken back when it succeeds, so attempts sent in
-- parallel cannot outrun the count.
CREATE TABLE identity.login_attempts (
    key          text PRIMARY KEY,
    failures     integer NOT NULL,
    counted_at   timestamptz NOT NULL,  -- the last counted attempt
    locked_until timestamptz,           -- set once failures reach the limit
    allowed      boolean NOT NULL       -- whether the last attempt was let through
);

-- Request rates per key ("signup:<ip>", "jobs:<user id>") as a token bucket
-- kept in one timestamp (GCRA): `tat` is when the bucket is full again.
CREATE TABLE identity.rate_limits (
    key     text PRIMARY KEY,
    tat     timestamptz NOT NULL,
    allowed boolean NOT NULL  -- whether the last request was let through
);

-- One row per open event stream; the replica serving it refreshes the lease
-- while the stream is open and deletes it at the end. A replica that dies
-- leaves its leases to expire.
CREATE TABLE identity.stream_leases (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX stream_leases_user ON identity.stream_leases (user_id, expires_at);

ALTER TABLE identity.login_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.rate_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.stream_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE identity.login_attempts FORCE ROW LEVEL SECURITY;
ALTER TABLE identity.rate_limits FORCE ROW LEVEL SECURITY;
ALTER TABLE identity.stream_leases FORCE ROW LEVEL SECURITY;

CREATE POLICY login_attempts_system ON identity.login_attempts
    USING (public.app_role() = 'system') WITH CHECK (public.app_role() = 'system');
CREATE POLICY rate_limits_system ON identity.rate_limits
    USING (public.app_role() = 'system') WITH CHECK (public.app_role() = 'system');
CREATE POLICY stream_leases_system ON identity.stream_leases
    USING (public.app_role() = 'system') WITH CHECK (public.app_role() = 'system');

GRANT SELECT, INSERT, UPDATE, DELETE
    ON identity.login_attempts, identity.rate_limits, identity.stream_leases
    TO ourvidz_gateway;
