"""Durable building blocks for services on AWS: idempotency, sagas, outbox, queue consumer."""
