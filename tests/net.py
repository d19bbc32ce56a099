"""Network helpers shared by the tests' real servers (all on 127.0.0.1)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (for servers the test starts, or for "server is down")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
