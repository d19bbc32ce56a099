"""`kiosk serve` (the touchscreen app) and `kiosk hash-pin` (PIN hashes for [ui] and [[staff]])."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from kiosk import systemd

log = logging.getLogger(__name__)


def make_server(app: Any, host: str, port: int, threads: int = 16) -> Any:
    """A waitress server (threads: the preview stream and long polls each hold one while open)."""
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="kiosk", channel_timeout=30)


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (keep it loopback).")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--threads", default=16, show_default=True, type=int)
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, threads: int) -> None:
    """Run the station's touchscreen app (one process owns the camera and the GPIO pins)."""
    from kiosk import config as config_module
    from kiosk.app import create_app

    config = config_module.load((ctx.find_root().obj or {}).get("config_path"))
    app = create_app(config)
    rt = app.extensions["station"]
    server = make_server(app, host, port, threads)
    stopping = threading.Event()

    def stop(*_: object) -> None:
        if not stopping.is_set():
            stopping.set()
            systemd.notify_stopping()
            server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    systemd.start_watchdog(lambda: not stopping.is_set())
    url = f"http://{host}:{server.effective_port}/"
    systemd.notify_ready(f"serving {url}")
    click.echo(f"station {config.station.id} serving {url}", err=True)
    try:
        server.run()
    except (OSError, ValueError):  # closed by stop()
        if not stopping.is_set():
            raise
    finally:
        rt.stop()


@click.command(name="hash-pin")
@click.option("--pin", prompt=True, hide_input=True, confirmation_prompt=True, help="Digits only, 4-12.")
def hash_pin_command(pin: str) -> None:
    """Print an argon2 hash of a PIN for kiosk.toml ([ui] admin_pin_hash, [[staff]] pin_hash)."""
    from argon2 import PasswordHasher

    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise click.BadParameter("a PIN is 4 to 12 digits", param_hint="--pin")
    click.echo(PasswordHasher().hash(pin))


def register(main: click.Group) -> None:
    main.add_command(serve_command, name="serve")
    main.add_command(hash_pin_command, name="hash-pin")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_command())
