"""Sluice metrics & cost aggregator."""
