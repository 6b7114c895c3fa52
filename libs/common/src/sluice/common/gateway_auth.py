"""Only the gateway reaches instances: a per-deployment secret header.

Envoy adds `x-sluice-gateway: <secret>` to every request it sends to a
deployment's instances (an upstream filter of that deployment's cluster, so a
mirrored copy carries the mirror target's own secret), and the inference
server answers 403 to any request without it, except its health probes
(`/`, `/ready`, `/v2/health/*`, which tell nothing but liveness). The secret
is HMAC-SHA256(platform secret key, "gateway:<endpoint>/<deployment>"): the
provisioner and the traffic controller derive it without storing it, and one
deployment's secret says nothing about another's.

Why a header rather than the alternatives:
- mutual TLS to each instance would cost a TLS session per upstream
  connection and TLS in the inference server's hot path (well above the
  0.1 ms p50 budget on loopback), plus a certificate per deployment to issue
  and rotate;
- Unix sockets guarded by file modes do not exist across pods on Kubernetes,
  answer a refused connection rather than Azure-like 403, and need Envoy to
  be in every deployment's group;
- a header costs one constant-time comparison (well under a microsecond) and
  works the same on both backends. What it needs is that the secret stays
  secret: it lives only in the instance's own environment (its code may
  read it and so call *itself* directly, nothing else), in the provisioner
  and traffic controller, and in Envoy's configuration (so the xDS port and
  Envoy's admin interface must be closed to deployment code).
"""

from __future__ import annotations

from sluice.common.secretbox import SecretBox

HEADER = "x-sluice-gateway"
ENV = "SLUICE_GATEWAY_SECRET"  # how the provisioner hands an instance its secret


def purpose(endpoint: str, deployment: str) -> str:
    return f"gateway:{endpoint}/{deployment}"


def secret_for(secret_key: str, endpoint: str, deployment: str) -> str:
    return SecretBox(secret_key).derive(purpose(endpoint, deployment))
