-- Abuse limits at the edge, shared by every gateway replica: failed sign-in
-- counts and lock-outs, request rates (sign-ups, job submissions) and leases of
-- open event streams. They belong to the gateway's login role alone: no other
-- service's role is granted them, and row level security admits that role
-- (and the owner) only.
-- depends: gateway_0002_definer_lookups

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

CREATE POLICY login_attempts_gateway ON identity.login_attempts TO ourvidz_gateway
    USING (true) WITH CHECK (true);
CREATE POLICY rate_limits_gateway ON identity.rate_limits TO ourvidz_gateway
    USING (true) WITH CHECK (true);
CREATE POLICY stream_leases_gateway ON identity.stream_leases TO ourvidz_gateway
    USING (true) WITH CHECK (true);
-- The owner (migrations, operators) sees them too, as on the other identity tables.
CREATE POLICY login_attempts_owner ON identity.login_attempts TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY rate_limits_owner ON identity.rate_limits TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY stream_leases_owner ON identity.stream_leases TO CURRENT_USER
    USING (true) WITH CHECK (true);

GRANT SELECT, INSERT, UPDATE, DELETE
    ON identity.login_attempts, identity.rate_limits, identity.stream_leases
    TO ourvidz_gateway;
