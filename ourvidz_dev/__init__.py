"""The development stack and the benchmarks: `make up` (ourvidz_dev.up), the
in-process mesh the tests run (ourvidz_dev.stack), the embedded PostgreSQL,
NATS and S3 (ourvidz_dev.embedded) and `make bench` (ourvidz_dev.bench).

This package sits above the services (it starts them) and is never part of an
image; the shared library (`ourvidz`) and the services never import it."""
