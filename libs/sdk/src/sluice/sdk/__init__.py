"""Sluice SDK: a Python client for the Sluice API and the `sluice` command line."""
