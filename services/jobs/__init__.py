"""The jobs service: every job, its state machine, its events, and the outbox
that publishes work to JetStream."""
