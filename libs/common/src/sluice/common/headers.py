"""HTTP headers two services agree on (kept import-free: the inference server loads it)."""

# The inference server's mark on a 503 it answered without running the request (draining,
# or init() not finished); the gateway retries exactly those on another instance.
NOT_PROCESSED_HEADER = "x-sluice-not-processed"
