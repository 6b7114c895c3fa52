"""Sluice model server: Azure ML scoring scripts behind HTTP `/score`."""
