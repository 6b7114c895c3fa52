"""Sluice registry: the source of truth for endpoints, deployments, traffic and credentials."""
