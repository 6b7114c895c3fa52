"""Score an online endpoint through the gateway, as a client would: HTTPS, the endpoint's
host name, its key or token.

On the platform's machine (`invoke`) the request goes to
`https://<endpoint>.<domain>/score` on the local platform's Envoy. The TCP
connection goes to the gateway's address (loopback), while TLS SNI and the
Host header carry `<endpoint>.<domain>`, so no DNS entry is needed; the
certificate is verified against the platform's local CA
(`<state_dir>/tls/ca.crt`) unless a certificate authority file is given.

Elsewhere (`invoke_at`, for a CLI that reaches a remote registry through
SLUICE_REGISTRY_ADDRESS) it goes to the endpoint's `scoring_uri`, as `az ml
online-endpoint invoke` does, verified against the system's trust store
(OpenSSL's SSL_CERT_FILE names another, e.g. a copy of the platform's CA).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sluice.common.platform import PlatformState
from sluice.sdk.client import RegistryClient, SluiceError

DEPLOYMENT_HEADER = "azureml-model-deployment"
DEFAULT_TIMEOUT_S = 320.0  # above Azure's longest request_timeout_ms (300 s, Kubernetes)

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class GatewayTarget:
    """Where the gateway listens and how to trust it."""

    connect_host: str
    port: int
    tls: bool
    ca_file: Path | None = None

    @classmethod
    def of_platform(cls, state: PlatformState) -> GatewayTarget:
        if state.envoy_https_port:
            ca = state.state_dir / "tls" / "ca.crt"
            return cls("127.0.0.1", state.envoy_https_port, True, ca if ca.exists() else None)
        if state.envoy_http_port:
            return cls("127.0.0.1", state.envoy_http_port, False)
        raise SluiceError("UNAVAILABLE", "the platform's gateway has no listener")


class _HostHttpsConnection(http.client.HTTPSConnection):
    """HTTPS to `connect_host` with SNI and certificate checks for the (virtual) host name."""

    def __init__(
        self, host: str, port: int, connect_host: str, *, context: ssl.SSLContext, timeout: float
    ):
        super().__init__(host, port, timeout=timeout, context=context)
        self._connect_host = connect_host
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._connect_host, self.port or 443), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def send(
    target: GatewayTarget,
    *,
    host: str,
    path: str,
    body: bytes,
    headers: Headers,
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[int, Headers, bytes]:
    """One request to the gateway for virtual host `host`; (status, headers, body)."""
    conn: http.client.HTTPConnection
    if target.tls:
        context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
        conn = _HostHttpsConnection(
            host, target.port, target.connect_host, context=context, timeout=timeout_s
        )
    else:
        conn = http.client.HTTPConnection(target.connect_host, target.port, timeout=timeout_s)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, list(response.getheaders()), response.read()
    finally:
        conn.close()


def credential(client: RegistryClient, endpoint_name: str) -> str:
    """The endpoint's primary key, or a fresh token for an aml_token endpoint."""
    creds = client.get_credentials(endpoint_name)
    return creds.access_token or creds.primary_key


def invoke(
    endpoint_name: str,
    body: bytes,
    deployment: str | None,
    *,
    client: RegistryClient,
    platform_state: PlatformState,
    target: GatewayTarget | None = None,
) -> tuple[int, Headers, bytes]:
    """POST `body` to the endpoint's /score through the gateway; (status, headers, body).

    `deployment` pins the request with the `azureml-model-deployment` header
    (it works at 0% traffic; pinned requests are never mirrored).
    """
    return send(
        target or GatewayTarget.of_platform(platform_state),
        host=f"{endpoint_name}.{platform_state.domain}",
        path="/score",
        body=body,
        headers=_scoring_headers(client, endpoint_name, deployment),
    )


def invoke_at(
    endpoint_name: str, body: bytes, deployment: str | None, *, client: RegistryClient
) -> tuple[int, Headers, bytes]:
    """`invoke` from any machine: POST to the `scoring_uri` the registry gives the endpoint."""
    uri = client.get_online_endpoint(endpoint_name).scoring_uri
    url = urllib.parse.urlsplit(uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SluiceError("FAILED_PRECONDITION", f"{endpoint_name} has no scoring URI ({uri!r})")
    tls = url.scheme == "https"
    target = GatewayTarget(url.hostname, url.port or (443 if tls else 80), tls)
    headers = _scoring_headers(client, endpoint_name, deployment)
    try:
        return send(target, host=url.hostname, path=url.path or "/", body=body, headers=headers)
    except ssl.SSLCertVerificationError as exc:
        raise SluiceError(
            "UNAVAILABLE",
            f"{uri}: the gateway's certificate is not trusted here ({exc.verify_message}); "
            "give its CA (the platform's <state_dir>/tls/ca.crt) in SSL_CERT_FILE",
        ) from exc
    except OSError as exc:
        raise SluiceError("UNAVAILABLE", f"cannot reach the gateway at {uri}: {exc}") from exc


def _scoring_headers(client: RegistryClient, endpoint_name: str, deployment: str | None) -> Headers:
    headers: Headers = [
        ("Authorization", f"Bearer {credential(client, endpoint_name)}"),
        ("Content-Type", "application/json"),
    ]
    if deployment:
        headers.append((DEPLOYMENT_HEADER, deployment))
    return headers
