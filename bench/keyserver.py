"""Key server benchmark: unwrap-with-audit vs a no-op endpoint, served as production serves it.

For each backend (SQLite, and PostgreSQL in a throwaway *durable* cluster, reached over its Unix socket as
in production) the key server runs under gunicorn (gthread workers) on a free 127.0.0.1 port. Client
processes with keep-alive connections send GET /healthz (no database, no auth: the stack's ceiling) and
POST /v1/unwrap (token lookup, policy, HPKE unwrap, audit append + commit) in two ways, each endpoint
measured by the same client code in the same run:

* closed loop (saturation): N connections send back to back for a fixed time, in --rounds rounds of no-op
  then unwrap. Gives the capacity (req/s) and the unwrap/no-op ratio (the verdicts take medians). Each round
  also measures POST /bench/unwrap-no-audit (bench/keyserver_ceiling.py, bench only): the unwrap's request
  work without the database and audit, which splits the unwrap's cost (--no-ceiling: serve the app alone). Its
  latencies are queueing: N requests always in flight at a rate X means a mean latency of N / X (Little's
  law), whatever the server does.
* alternating slices: after the rounds, one closed-loop run alternating no-op and unwrap slices
  (--slices, --slice-seconds, with --gap-seconds between for the last requests to finish), so both see the
  machine in the same state; a shared VM's speed drifts between windows by more than the differences
  measured. The ratio verdict needs the rounds' median and this run both at 50 %.
* open loop (constant rate, wrk2-style): a fixed offered rate (--rates, e.g. 500 req/s) spread evenly over
  N connections, each request sent at its scheduled time; latency is measured from the *scheduled* send
  time, so a stall delays and counts against every request queued behind it (no coordinated omission).
  Gives the latency at that load.

The audit rows written must equal the unwraps answered, in every measurement, and the audit chain must
verify after each backend. Prints tables and the targets' verdicts; run `python bench/keyserver.py --help`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from http_load import load, load_alternating  # noqa: E402  (bench/, next to this script)
from keyserver_report import report  # noqa: E402
from keyserver_server import (  # noqa: E402
    UNWRAP_WITHOUT_AUDIT,
    audit_count,
    audit_verified,
    measure,
    prepare,
    serve,
)

from tests.keyserver.pg import Cluster, free_port  # noqa: E402


def _alternating(
    config_path: Path, port: int, token: str, bodies: list[bytes], concurrency: int, args: Any
) -> dict[str, Any]:
    """No-op and unwrap in alternating slices of one closed-loop run (http_load.load_alternating): both
    endpoints see the machine in the same state, which separate 5-s windows on a shared VM do not."""
    before = audit_count(config_path)
    phases = [("/healthz", []), ("/v1/unwrap", bodies)]
    timing = {"slices": 2 * args.slices, "slice_seconds": args.slice_seconds, "gap_seconds": args.gap_seconds}
    result = load_alternating(port, phases, token, concurrency, **timing)
    noop, unwrap = result["/healthz"], result["/v1/unwrap"]
    audited = audit_count(config_path) - before
    assert noop["errors"] == unwrap["errors"] == 0, "a request failed in the alternating slices"
    assert audited == unwrap["ok"], f"audit rows {audited} != unwraps answered {unwrap['ok']}"
    pairs = [u / n for n, u in zip(noop["slice_rates"], unwrap["slice_rates"], strict=True) if n]
    return {
        "concurrency": concurrency,
        "noop": noop,
        "unwrap": unwrap,
        "audited": audited,
        "ratio": unwrap["rate"] / noop["rate"],
        "pair_ratios": pairs,
        **timing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per closed-loop measurement")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="closed-loop rounds per client count (no-op then unwrap each; the verdicts take medians)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="clients / connections")
    parser.add_argument(
        "--rates",
        type=float,
        nargs="*",
        default=[500.0],
        help="open-loop offered rates in req/s, each at every --concurrency (none: skip the open loop)",
    )
    parser.add_argument("--open-seconds", type=float, default=10.0, help="per open-loop measurement")
    parser.add_argument("--no-closed", action="store_true", help="skip the closed loop")
    parser.add_argument(
        "--slices",
        type=int,
        default=10,
        help="closed loop, after the rounds: slices per endpoint alternating no-op and unwrap (0: none)",
    )
    parser.add_argument("--slice-seconds", type=float, default=1.0, help="length of one alternating slice")
    parser.add_argument(
        "--gap-seconds", type=float, default=0.25, help="between slices: the last requests of one finish"
    )
    # Measured best on 2 cores: one worker on both backends. Releases of one process share a transaction
    # (group commit, keyserver/release.py); a second worker halves the batches and contends for the chain
    # lock across processes (PostgreSQL 2x4: 2.7-2.9 ms server CPU per unwrap against 1.7-2.2 for 1x16).
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers with PostgreSQL")
    parser.add_argument("--sqlite-workers", type=int, default=1, help="gunicorn workers with SQLite")
    parser.add_argument("--threads", type=int, default=32, help="threads per worker with PostgreSQL")
    parser.add_argument("--sqlite-threads", type=int, default=8, help="threads per worker with SQLite")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin workers to CPUs (KEYSERVER_PIN_WORKERS=0)"
    )
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="serve keyserver.wsgi:app alone (no bench-only unwrap without audit in the closed loop)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    closed: list[dict[str, Any]] = []
    open_: list[dict[str, Any]] = []
    alternating: list[dict[str, Any]] = []
    for backend in args.backends:
        directory = Path(tempfile.mkdtemp(prefix=f"ks-bench-{backend}-"))
        cluster = Cluster(durable=True) if backend == "postgresql" else None
        port = free_port()
        try:
            # over the Unix socket, as the production recipe connects (deploy/keyserver: host=/run/postgresql)
            url = cluster.socket_url() if cluster else ""
            config_path, token, bodies = prepare(directory, url, port)
            workers = args.sqlite_workers if backend == "sqlite" else args.workers
            threads = args.sqlite_threads if backend == "sqlite" else args.threads
            ceiling = not args.no_ceiling
            bench_app = "ceiling" if ceiling else None
            server = serve(config_path, port, workers, threads, pin=not args.no_pin, bench_app=bench_app)
            pids = (server.pid, cluster.postmaster_pid() if cluster else None)
            base = {"backend": backend, "workers": workers, "threads": threads, "pinned": not args.no_pin}
            try:
                load(port, "/healthz", [], token, 8, 1.0)  # warm-up, the same for both endpoints
                load(port, "/v1/unwrap", bodies, token, 8, 1.0)  # (connections, key cache)
                for concurrency in [] if args.no_closed else args.concurrency:
                    # Rounds alternate no-op and unwrap, so each ratio compares two back-to-back windows.
                    for round_ in range(1, args.rounds + 1):
                        before = audit_count(config_path)
                        noop = measure(*pids, port, "/healthz", [], token, concurrency, args.seconds)
                        no_audit = None
                        if ceiling:
                            job = (port, UNWRAP_WITHOUT_AUDIT, bodies, token, concurrency, args.seconds)
                            no_audit = measure(*pids, *job)
                            assert no_audit["errors"] == 0, "the unwrap without audit failed"
                        job = (port, "/v1/unwrap", bodies, token, concurrency, args.seconds)
                        unwrap = measure(*pids, *job)
                        audited = audit_count(config_path) - before
                        closed.append(
                            {
                                **base,
                                "concurrency": concurrency,
                                "round": round_,
                                "noop": noop,
                                "no_audit": no_audit,
                                "unwrap": unwrap,
                                "audited": audited,
                                "ratio": unwrap["rate"] / noop["rate"],
                            }
                        )
                        assert audited == unwrap["ok"], (
                            f"audit rows {audited} != unwraps answered {unwrap['ok']}"
                        )
                    if args.slices:
                        alternating.append(
                            {**base, **_alternating(config_path, port, token, bodies, concurrency, args)}
                        )
                for rate in args.rates:
                    for connections in args.concurrency:
                        before = audit_count(config_path)
                        job = (port, "/healthz", [], token, connections, args.open_seconds)
                        noop = measure(*pids, *job, rate=rate)
                        job = (port, "/v1/unwrap", bodies, token, connections, args.open_seconds)
                        unwrap = measure(*pids, *job, rate=rate)
                        audited = audit_count(config_path) - before
                        open_.append(
                            {
                                **base,
                                "connections": connections,
                                "offered": rate,
                                "noop": noop,
                                "unwrap": unwrap,
                                "audited": audited,
                            }
                        )
                        assert audited == unwrap["ok"], (
                            f"audit rows {audited} != unwraps answered {unwrap['ok']}"
                        )
            finally:
                server.terminate()
                server.wait(timeout=10)
            verified = audit_verified(config_path)
            print(f"{backend}: audit chain verified after the runs: {verified}")
            assert verified, "the audit chain does not verify"
        finally:
            if cluster:
                cluster.stop()
            shutil.rmtree(directory, ignore_errors=True)
    print(
        "\nkey server under gunicorn gthread (workers x threads as shown; keyserver.gunicorn_conf, "
        "workers pinned to CPUs unless shown), keep-alive connections"
    )
    report(closed, open_, alternating, args)
    if args.json:
        results = {"closed": closed, "open": open_, "alternating": alternating}
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
