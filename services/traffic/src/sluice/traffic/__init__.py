"""Sluice traffic controller: Envoy configuration over xDS."""
