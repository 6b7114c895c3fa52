"""Sluice provisioner: the reconciler that runs deployments as inference-server instances."""
