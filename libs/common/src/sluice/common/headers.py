"""HTTP headers and gRPC metadata keys two sides agree on (import-free: the inference
server and the CLI load it)."""

# The inference server's mark on a 503 it answered without running the request (draining,
# or init() not finished); the gateway retries exactly those on another instance.
NOT_PROCESSED_HEADER = "x-sluice-not-processed"

# The inference server's mark on a non-2xx status that run() chose (an AMLResponse, a
# `(body, status)` tuple): the gateway answers it with 424 even where the same status of the
# server's own (408 timeout, 413 too large, 429 too busy, 503 not ready) passes as it is, and
# removes the mark.
MODEL_STATUS_HEADER = "x-sluice-model-status"

# gRPC trailing metadata on an UNAVAILABLE that a service's own dependency caused (MongoDB
# down): the SDK turns it into a one-line "the database is down" instead of "retry".
DEPENDENCY_DOWN_KEY = "sluice-dependency-down"
