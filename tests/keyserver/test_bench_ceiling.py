"""bench/keyserver_ceiling.py (an unwrap WITHOUT audit, for the benchmark only) and the other bench-only
apps stay out of the real key server, and bench/keyserver.py measures the unwrap without audit next to
the no-op and the audited unwrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keyserver.app import create_app
from tests.keyserver.bench_run import ROOT, run_bench
from tests.keyserver.conftest import make_config


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        ("keyserver_ceiling", "KEYSERVER_BENCH_CEILING"),  # the unwrap without audit
        ("keyserver_steps_app", "KEYSERVER_BENCH_STEPS"),  # CPU counters (bench/keyserver_steps.py)
    ],
)
def test_the_bench_only_apps_refuse_to_load_outside_the_bench(module: str, variable: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != variable}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "bench")])
    run = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "bench only" in run.stderr


def test_the_key_server_app_has_no_bench_route(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, ""))
    rules = [rule.rule for rule in app.url_map.iter_rules()]
    assert "/v1/unwrap" in rules
    assert not [rule for rule in rules if rule.startswith("/bench")]


def test_the_bench_measures_the_unwrap_without_audit_and_alternating_slices(tmp_path: Path) -> None:
    out = tmp_path / "ks.json"
    run = run_bench(
        "keyserver.py",
        "--backends",
        "sqlite",
        "--seconds",
        "0.5",
        "--rounds",
        "1",
        "--concurrency",
        "2",
        "--rates",
        "--slices",
        "2",
        "--slice-seconds",
        "0.3",
        "--gap-seconds",
        "0.1",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert "audit chain verified after the runs: True" in run.stdout
    assert "without audit req/s" in run.stdout
    results = json.loads(out.read_text())
    (row,) = results["closed"]
    assert row["no_audit"]["ok"] > 0 and row["no_audit"]["errors"] == 0
    assert row["unwrap"]["ok"] > 0 and row["unwrap"]["errors"] == 0
    # The bench-only endpoint wrote no audit record: the count matches the real unwraps alone.
    assert row["audited"] == row["unwrap"]["ok"]
    # No-op and unwrap in alternating slices of one run: both measured, every unwrap audited.
    assert "Closed loop, alternating" in run.stdout
    (mixed,) = results["alternating"]
    assert mixed["noop"]["rate"] > 0 and mixed["unwrap"]["rate"] > 0 and len(mixed["pair_ratios"]) == 2
    assert mixed["unwrap"]["errors"] == 0 and mixed["audited"] == mixed["unwrap"]["ok"] > 0
    assert mixed["ratio"] == mixed["unwrap"]["rate"] / mixed["noop"]["rate"]
