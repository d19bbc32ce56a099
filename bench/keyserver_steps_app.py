"""BENCH ONLY, never deploy: the key server app with CPU counters around each step of a key release.

bench/keyserver_steps.py serves this app (one gunicorn worker) and reads the counters after a no-op run and
after an unwrap run. Each step's counter adds the CPU time of the thread that ran it (time.thread_time_ns:
not the time spent waiting, so a thread asleep in the release batch or in a libpq round trip costs
nothing), which splits the worker's CPU per request by step where a rate or py-spy's samples cannot.

The counters are wrappers put around the key server's functions where they are looked up at call time
(module attributes and methods), so the key server's code is measured as it is. Each wrapper costs about
1 µs of CPU, which the figures include. Routes: ``GET /bench/steps`` (the counters: name -> [ns, calls]),
``POST /bench/steps/reset``. It refuses to load unless KEYSERVER_BENCH_STEPS=1, which only
bench/keyserver_steps.py sets for its throwaway server on 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Response, jsonify

if os.environ.get("KEYSERVER_BENCH_STEPS") != "1":
    raise RuntimeError("bench/keyserver_steps_app.py changes the key server's code paths: bench only")

# After the guard: importing builds the app from KEYSERVER_CONFIG.
from keyserver import api, audit, release, release_pg, reports
from keyserver.wsgi import app
from kiosk.sealing import envelope

# (counter, owner, attribute): the functions wrapped, where the key server looks them up when it calls them.
STEPS: list[tuple[str, Any, str]] = [
    ("json_body", api, "json_body"),
    ("unwrap", reports, "unwrap"),
    ("prepare_release", reports, "prepare_release"),
    ("parse_header", reports, "parse_header"),
    ("canonical_header", envelope, "canonical_json"),
    ("hpke_unwrap", reports, "_unwrapped"),
    ("batch_commit", release.ReleaseBatcher, "commit"),
    ("batch_pg", release.ReleaseBatcher, "_write_pg"),
    ("batch_general", release.ReleaseBatcher, "_write"),
    ("pg_begin_and_read", release_pg.PgReleaseConnection, "begin_and_read"),
    ("decide_all", release.ReleaseBatcher, "_decide_all"),
    ("audit_chain", audit, "chain"),
    ("pg_append_and_commit", release_pg.PgReleaseConnection, "append_and_commit"),
    ("release_answer", api, "release_answer"),
]

_lock = threading.Lock()
_counters: dict[str, list[int]] = {}


def _add(name: str, ns: int) -> None:
    with _lock:
        counter = _counters.setdefault(name, [0, 0])
        counter[0] += ns
        counter[1] += 1


def _counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(name, time.thread_time_ns() - start)

    return counted


for _name, _owner, _attribute in STEPS:
    setattr(_owner, _attribute, _counted(_name, getattr(_owner, _attribute)))

_app_call = app.wsgi_app


def _counted_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    """The whole request inside Flask (routing, hooks, the view, the response), per path."""
    path = environ.get("PATH_INFO", "")
    if path.startswith("/bench/"):
        return _app_call(environ, start_response)
    start = time.thread_time_ns()
    try:
        return _app_call(environ, start_response)
    finally:
        _add(f"flask {path}", time.thread_time_ns() - start)


app.wsgi_app = _counted_wsgi  # type: ignore[method-assign]


def steps() -> Response:
    with _lock:
        return jsonify(steps={name: list(counter) for name, counter in _counters.items()})


def reset() -> Response:
    with _lock:
        _counters.clear()
    return jsonify(reset=True)


app.add_url_rule("/bench/steps", "bench_steps", steps, methods=["GET"])
app.add_url_rule("/bench/steps/reset", "bench_steps_reset", reset, methods=["POST"])
