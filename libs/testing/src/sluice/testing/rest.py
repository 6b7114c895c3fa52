"""A small client for the management listener's REST API, called as curl would call it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from sluice.common.platform import PlatformState
from sluice.testing.wait import wait_for


@dataclass
class Rest:
    base: str
    admin_token: str

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool | str = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The whole answer. `auth`: True sends the admin token, False none, a string that
        token; `headers` are sent as well (If-Match)."""
        sent = dict(headers or {})
        if auth:
            sent["authorization"] = f"Bearer {self.admin_token if auth is True else auth}"
        return httpx.request(method, self.base + path, json=body, headers=sent, timeout=30)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool | str = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, the JSON body, or its text when it is not JSON)."""
        answer = self.send(method, path, body, auth=auth, headers=headers)
        try:
            return answer.status_code, answer.json()
        except ValueError:
            return answer.status_code, answer.text


def rest_of(platform: PlatformState) -> Rest:
    """The platform's REST API, once Envoy serves the management listener."""
    assert platform.management_url, "the platform has no management listener"
    token = (platform.state_dir / "admin-token").read_text().strip()
    rest = Rest(platform.management_url, token)
    wait_for(
        lambda: rest.call("GET", "/onlineEndpoints")[0] == 200,
        "the management listener serves the REST API",
        deadline=30,
    )
    return rest
