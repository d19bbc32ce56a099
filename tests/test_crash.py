"""Crash safety: SIGKILL the station at random points during sends (bench/crash.py, smaller count)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from kiosk.destinations.base import Parcel
from kiosk.destinations.folder import FolderConfig, FolderDestination
from kiosk.outbox.store import Outbox
from tests.test_outbox import _seal_into

BENCH = Path(__file__).resolve().parents[1] / "bench" / "crash.py"


def test_nothing_lost_duplicated_or_left_after_random_kills() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--sends", "15", "--kills", "4", "--seed", "7", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["kills"] >= 1, "no kill landed: the test would prove nothing"
    assert result["acknowledged"] == 15
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["leftover"] == 0
    assert result["distinct_patients_delivered"] == 15
    assert result["audit_chain_intact"] is True


def test_a_copy_interrupted_at_the_share_is_replaced_not_left_behind(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    outbox = Outbox(tmp_path / "data")
    report_id = str(uuid.uuid4())
    path, header = _seal_into(outbox, report_id)
    (share / f".{report_id}.cpseal.partial").write_bytes(b"the first half of an earlier attempt")
    FolderDestination(FolderConfig(name="share", type="folder", path=share)).deliver(
        Parcel(report_id, path, header)
    )
    assert sorted(p.name for p in share.iterdir()) == [f"{report_id}.cpseal"]
    assert (share / f"{report_id}.cpseal").read_bytes() == path.read_bytes()
    outbox.close()
