"""xDS: Envoy resources, versioned snapshots and the ADS server."""
