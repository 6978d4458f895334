"""Edge admin room: a client of Envoy's admin interface, which listens on loopback only."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any, Final

_REQUEST_TIMEOUT_SECONDS: Final = 2.0
# Proxy settings from the environment must never apply to loopback admin calls.
_NO_PROXY_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AdminClient:
    """Envoy's admin interface at ``address`` (``host:port``); each call is one GET in a worker thread."""

    def __init__(self, address: str) -> None:
        self.address = address

    @property
    def url(self) -> str:
        """``http://host:port`` of the admin interface."""
        return f"http://{self.address}"

    async def get(self, path: str) -> str:
        """The body of ``GET path``; raises OSError (``HTTPError`` included) when Envoy does not answer 200."""
        return await asyncio.to_thread(_http_get, f"{self.url}{path}")

    async def is_live(self) -> bool:
        """True once Envoy's initialisation is over and its listeners accept connections (``/ready``)."""
        try:
            return (await self.get("/ready")).strip() == "LIVE"
        except OSError:  # 503 while Envoy initialises
            return False

    async def listener_port(self, name: str) -> int:
        """The port listener ``name`` is bound to; 0 while the admin cannot tell yet."""
        try:
            listeners = json.loads(await self.get("/listeners?format=json"))
        except (OSError, ValueError):
            return 0
        return _bound_port(listeners, name) if listeners else 0

    async def host_healthy(self, cluster: str, host: str) -> bool:
        """True when Envoy's health check of ``host`` (``address:port``) in ``cluster`` passes."""
        return f"{cluster}::{host}::health_flags::healthy" in await self.get("/clusters")

    async def prometheus_stats(self) -> str:
        """Envoy's stats in the Prometheus text format."""
        return await self.get("/stats/prometheus")


def _bound_port(listeners: Any, name: str) -> int:
    for status in listeners.get("listener_statuses", []):
        if status.get("name") == name:
            port = status.get("local_address", {}).get("socket_address", {}).get("port_value", 0)
            return int(port)
    return 0


def _http_get(url: str) -> str:
    with _NO_PROXY_OPENER.open(url, timeout=_REQUEST_TIMEOUT_SECONDS) as response:
        body: bytes = response.read()
    return body.decode()
