"""Health checks the supervisor polls: each answers "is it up?" quickly and never raises."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sluice.common.pki import PROBE_CLIENT, PlatformPki


@dataclass(frozen=True)
class TcpCheck:
    host: str
    port: int

    def __call__(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class HttpCheck:
    url: str
    expect_status: int = 200

    def __call__(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1.0) as response:  # noqa: S310 - our loopback URL
                return int(response.status) == self.expect_status
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def describe(self) -> str:
        return self.url


class _UnixHttpConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def unix_http_get(socket_path: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `path` from an HTTP server on a Unix socket (Envoy's admin): (status, body)."""
    conn = _UnixHttpConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class UnixHttpCheck:
    """An HTTP GET on a Unix socket, e.g. Envoy's admin `/ready`."""

    socket_path: str
    path: str = "/ready"

    def __call__(self) -> bool:
        try:
            return unix_http_get(self.socket_path, self.path, timeout=1.0)[0] == 200
        except OSError:
            return False

    def describe(self) -> str:
        return f"unix://{self.socket_path}#{self.path}"


@dataclass(frozen=True)
class GrpcHealthCheck:
    """grpc.health.v1 Check of the server (service "") or of one service.

    With `pki` (a folder, sluice.common.pki) and `server_name`, the port speaks mutual TLS:
    the check presents the platform's probe certificate and verifies the server's name.
    """

    address: str
    service: str = ""
    pki: str = ""
    server_name: str = ""

    def _channel(self) -> grpc.Channel:
        if not self.pki:
            return grpc.insecure_channel(self.address)
        chain, key, ca = PlatformPki(Path(self.pki)).client(PROBE_CLIENT).read()
        credentials = grpc.ssl_channel_credentials(ca, key, chain)
        options = [("grpc.ssl_target_name_override", self.server_name)]
        return grpc.secure_channel(self.address, credentials, options=options)

    def __call__(self) -> bool:
        try:
            with self._channel() as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=1.0)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except (grpc.RpcError, OSError):
            return False

    def describe(self) -> str:
        if self.pki:
            query = urllib.parse.urlencode({"pki": self.pki, "name": self.server_name})
            return f"grpcs://{self.address}?{query}"
        return f"grpc://{self.address}"


@dataclass(frozen=True)
class MongoPingCheck:
    uri: str

    def __call__(self) -> bool:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        try:
            client: MongoClient[dict[str, object]] = MongoClient(
                self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
            )
            with client:
                client.admin.command("ping")
                return True
        except PyMongoError:
            return False

    def describe(self) -> str:
        return self.uri


def check_from_probe(
    probe: str,
) -> TcpCheck | HttpCheck | UnixHttpCheck | GrpcHealthCheck | MongoPingCheck:
    """Rebuild a check from its `describe()` string (as stored in the platform state)."""
    if probe.startswith(("http://", "https://")):
        return HttpCheck(probe)
    if probe.startswith("unix://"):
        socket_path, _, path = probe.removeprefix("unix://").partition("#")
        return UnixHttpCheck(socket_path, path or "/")
    if probe.startswith("grpc://"):
        return GrpcHealthCheck(probe.removeprefix("grpc://"))
    if probe.startswith("grpcs://"):
        address, _, query = probe.removeprefix("grpcs://").partition("?")
        params = urllib.parse.parse_qs(query)
        return GrpcHealthCheck(address, pki=params["pki"][0], server_name=params["name"][0])
    if probe.startswith("mongodb://"):
        return MongoPingCheck(probe)
    if probe.startswith("tcp://"):
        host, _, port = probe.removeprefix("tcp://").rpartition(":")
        return TcpCheck(host, int(port))
    raise ValueError(f"unknown probe {probe!r}")
