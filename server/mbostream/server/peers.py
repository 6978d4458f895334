"""Client-address room: who a gRPC peer is, and the cool-down of addresses that guess tokens.

A peer is counted by its address without the port (``ipv4:10.0.0.7``): a client that opens
many connections is still one client. Behind a proxy (Envoy in ``mbostream run``) every browser
shares the proxy's address; the limits then apply to the proxy as a whole.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from mbostream.errors import AuthError, AuthThrottledError, PermissionDeniedError

#: Failed attempts one address may make within :data:`FAILURE_WINDOW_SECONDS`…
MAX_AUTH_FAILURES: Final = 10
FAILURE_WINDOW_SECONDS: Final = 60.0
#: …before every attempt from it is refused (RESOURCE_EXHAUSTED) for this long.
COOL_DOWN_SECONDS: Final = 60.0
#: Addresses remembered at most; the least recently failing one is forgotten first.
MAX_TRACKED_PEERS: Final = 10_000


def peer_address(peer: str) -> str:
    """``context.peer()`` without the port: ``ipv4:1.2.3.4:567`` → ``ipv4:1.2.3.4``,
    ``ipv6:[::1]:567`` → ``ipv6:[::1]``; anything else (``unix:…``) as it is."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


@dataclass
class _Peer:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class AuthThrottle:
    """Counts failed credential checks per address and refuses an address that fails too often.

    Memory is bounded: at most ``max_peers`` addresses are remembered (the least recently failing
    ones are forgotten), each with at most ``max_failures`` timestamps. A success does not reset
    the count: a guesser who also holds a valid token gains nothing from guessing.
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_AUTH_FAILURES,
        window: float = FAILURE_WINDOW_SECONDS,
        cool_down: float = COOL_DOWN_SECONDS,
        max_peers: int = MAX_TRACKED_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.cool_down = cool_down
        self.max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def check(self, address: str, authenticate: Callable[[], None]) -> None:
        """Runs ``authenticate`` for ``address`` unless it is cooling down; counts its AuthError.

        Raises AuthThrottledError while the address cools down (``authenticate`` is not run: a
        refused guess reveals nothing), and re-raises the AuthError of a failed attempt.
        """
        now = self._clock()
        state = self._peers.get(address)
        if state is not None and now < state.blocked_until:
            raise AuthThrottledError(
                f"too many failed control-token attempts from {address}: retry in {state.blocked_until - now:.0f} s"
            )
        try:
            authenticate()
        except PermissionDeniedError:
            raise  # control is disabled: there is no token to guess
        except AuthError:
            self._failed(address, now)
            raise

    def _failed(self, address: str, now: float) -> None:
        state = self._peers.pop(address, None) or _Peer()
        self._peers[address] = state  # most recent last
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        state.failures.append(now)
        while state.failures and state.failures[0] <= now - self.window:
            state.failures.popleft()
        if len(state.failures) >= self.max_failures:
            state.blocked_until = now + self.cool_down
            state.failures.clear()
