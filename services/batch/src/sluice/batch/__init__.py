"""Sluice batch runner: batch endpoint jobs as mini-batches on a JetStream work queue."""
