"""bench/keyserver_steps.py splits the worker's CPU per request by step of a key release, next to the no-op;
its counting app (bench/keyserver_steps_app.py) refuses to load outside the bench (test_bench_ceiling.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.keyserver.bench_run import run_bench


def test_the_steps_bench_splits_the_unwrap_by_step(tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    run = run_bench(
        "keyserver_steps.py",
        "--backends",
        "sqlite",
        "--concurrency",
        "2",
        "--seconds",
        "0.5",
        "--threads",
        "4",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert "| step | no-op µs/request | unwrap µs/request |" in run.stdout
    assert "HPKE unwrap" in run.stdout and "audit records and their hash chain" in run.stdout
    (result,) = json.loads(out.read_text())
    noop, unwrap = result["noop"], result["unwrap"]
    assert result["verified"] and unwrap["audited"] == unwrap["ok"] > 0
    # Each counter saw what it should: one HPKE unwrap per answered release, none for the no-op, and the
    # whole request inside Flask counted per path.
    ok = unwrap["ok"]
    assert unwrap["steps"]["hpke_unwrap"][1] == ok
    assert unwrap["steps"]["flask /v1/unwrap"][1] == ok
    assert noop["steps"]["flask /healthz"][1] == noop["ok"] > 0
    assert "hpke_unwrap" not in noop["steps"]
    # The general path (SQLite) wrote the batches; at least one record per batch.
    batches = unwrap["steps"]["batch_general"][1]
    assert 0 < batches <= ok and unwrap["steps"]["audit_chain"][1] == batches
    # A step's CPU is part of its caller's.
    steps = {name: ns for name, (ns, _calls) in unwrap["steps"].items()}
    assert steps["hpke_unwrap"] < steps["prepare_release"] < steps["unwrap"] < steps["flask /v1/unwrap"]
