"""Key server benchmark, step by step: where the worker's CPU goes in an unwrap, next to the no-op.

bench/keyserver.py measures rates; on a shared 2-core VM they drift between runs by more than one step of
the unwrap costs. This script serves bench/keyserver_steps_app.py (the key server's app with a CPU counter
around each step of a key release, bench only) with ONE gunicorn worker (the counters live in its process)
on SQLite or a throwaway durable PostgreSQL, runs a closed loop of the no-op (`GET /healthz`, the
baseline) and then of `POST /v1/unwrap`, and prints each step's CPU per answered request:

* the worker's whole CPU per request (/proc: every thread, the kernel's share included), and the part of it
  inside Flask (routing, hooks, view, response) — the rest is gunicorn (HTTP parsing, sockets, its thread
  pool) and the hand-offs between threads;
* the steps of the unwrap, indented under the step that calls them. A step's figure is the CPU of the
  threads that ran it, whichever request they were serving: the release batch's leader runs the batch for
  every request in it, so the batch's steps are shown per request (their total over the requests
  answered) and per batch.

The counters cost about 1 µs of CPU per step and call, included in the figures. Every unwrap is audited
(rows = answered, checked). Run `python bench/keyserver_steps.py --help`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyserver_server import audit_count, audit_verified, measure, prepare, serve  # noqa: E402

from tests.keyserver.pg import Cluster, free_port  # noqa: E402

# (counter, label, depth) in the order of a release; the counters are bench/keyserver_steps_app.py's.
ROWS = [
    ("json_body", "read and parse the JSON body", 1),
    ("unwrap", "release (reports.unwrap)", 1),
    ("prepare_release", "request thread's checks (prepare_release)", 2),
    ("parse_header", "header validation", 3),
    ("canonical_header", "canonical header JSON", 3),
    ("hpke_unwrap", "HPKE unwrap", 3),
    ("batch_commit", "release batch: hand-off, and the leader's share of each batch (commit included)", 2),
    ("batch_pg", "batch transaction (PostgreSQL, release_pg)", 3),
    ("batch_general", "batch transaction (general path: SQLAlchemy)", 3),
    ("pg_begin_and_read", "round trip 1: BEGIN, chain lock, reads", 4),
    ("decide_all", "decisions", 4),
    ("audit_chain", "audit records and their hash chain", 4),
    ("pg_append_and_commit", "round trip 2: append, move the head, COMMIT", 4),
    ("release_answer", "JSON answer", 1),
]


def _bench_call(port: int, method: str, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status}")
    return json.loads(body)  # type: ignore[no-any-return]


def run(backend: str, concurrency: int, seconds: float, threads: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"ks-steps-{backend}-"))
    cluster = Cluster(durable=True) if backend == "postgresql" else None
    port = free_port()
    try:
        config_path, token, bodies = prepare(directory, cluster.socket_url() if cluster else "", port)
        server = serve(config_path, port, 1, threads, bench_app="steps")
        pids = (server.pid, cluster.postmaster_pid() if cluster else None)
        results: dict[str, Any] = {"backend": backend, "concurrency": concurrency, "threads": threads}
        try:
            # warm-up (connections, the private key cache), then one measurement per endpoint
            for path, sent in (("/healthz", []), ("/v1/unwrap", bodies)):
                measure(*pids, port, path, sent, token, concurrency, 1.0)
            for name, path, sent in (("noop", "/healthz", []), ("unwrap", "/v1/unwrap", bodies)):
                _bench_call(port, "POST", "/bench/steps/reset")
                before = audit_count(config_path)
                load = measure(*pids, port, path, sent, token, concurrency, seconds)
                audited = audit_count(config_path) - before
                assert load["errors"] == 0, f"{path}: {load['errors']} requests failed"
                results[name] = {
                    **load,
                    "audited": audited,
                    "steps": _bench_call(port, "GET", "/bench/steps")["steps"],
                }
            assert results["unwrap"]["audited"] == results["unwrap"]["ok"], "an answered unwrap has no record"
        finally:
            server.terminate()
            server.wait(timeout=10)
        results["verified"] = audit_verified(config_path)
        assert results["verified"], "the audit chain does not verify"
        return results
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _per_request(load: dict[str, Any], name: str) -> tuple[float, int] | None:
    """(µs of CPU per answered request, calls) of one counter, or None if it never ran."""
    counter = load["steps"].get(name)
    if not counter:
        return None
    return counter[0] / 1000 / max(load["ok"], 1), counter[1]


def report(results: dict[str, Any]) -> None:
    noop, unwrap = results["noop"], results["unwrap"]
    print(
        f"\n{results['backend']}, 1 worker x {results['threads']} threads, {results['concurrency']} clients: "
        f"no-op {noop['rate']:.0f} req/s, unwrap {unwrap['rate']:.0f} req/s "
        f"({unwrap['rate'] / noop['rate']:.0%}; with the counters' own cost), "
        f"audited = answered: {unwrap['audited']} = {unwrap['ok']}, chain verified: {results['verified']}\n"
    )
    print("| step | no-op µs/request | unwrap µs/request | unwrap: calls per request | µs per call |")
    print("|---|---:|---:|---:|---:|")

    def worker(load: dict[str, Any]) -> float:
        return (load["cpu_ms"] - load["db_cpu_ms"]) * 1000

    def flask(load: dict[str, Any], path: str) -> float:
        found = _per_request(load, f"flask {path}")
        return found[0] if found else 0.0

    inside_noop, inside_unwrap = flask(noop, "/healthz"), flask(unwrap, "/v1/unwrap")
    print(f"| worker process, all threads (/proc) | {worker(noop):.0f} | {worker(unwrap):.0f} | | |")
    outside = worker(noop) - inside_noop, worker(unwrap) - inside_unwrap
    print(f"| &nbsp;gunicorn and thread hand-offs (the rest) | {outside[0]:.0f} | {outside[1]:.0f} | | |")
    print(f"| &nbsp;request inside Flask | {inside_noop:.0f} | {inside_unwrap:.0f} | | |")
    for name, label, depth in ROWS:
        found = _per_request(unwrap, name)
        if found is None:
            continue
        per_request, calls = found
        per_call = per_request * max(unwrap["ok"], 1) / calls
        indent = "&nbsp;" * 2 * depth
        print(
            f"| {indent}{label} | | {per_request:.1f} | {calls / max(unwrap['ok'], 1):.2f} | {per_call:.1f} |"
        )
    if unwrap["db_cpu_ms"]:
        print(f"| PostgreSQL (its processes, /proc) | | {unwrap['db_cpu_ms'] * 1000:.0f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="per endpoint")
    parser.add_argument("--threads", type=int, default=32, help="threads of the one worker")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    everything = []
    for backend in args.backends:
        for concurrency in args.concurrency:
            results = run(backend, concurrency, args.seconds, args.threads)
            report(results)
            everything.append(results)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
