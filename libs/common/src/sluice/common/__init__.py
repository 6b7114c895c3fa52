"""Shared plumbing for Sluice services (settings, logging, events, Mongo, gRPC, supervisor)."""
