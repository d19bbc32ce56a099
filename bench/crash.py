"""Crash test: SIGKILL the station at random moments during N sends, restart, and account for every report.

    .venv/bin/python bench/crash.py [--sends 100] [--kills 20] [--seed 1] [--json]

A "station" here is one process doing what the station app does after Send: seal and queue each report
(`kiosk.pipeline`), acknowledge it ("sent" on screen), and deliver with the background `OutboxWorker` to
a real destination (a folder). The harness kills it with SIGKILL at random points, restarts it with the
reports not yet acknowledged, and finally lets it run until the outbox is empty. Then it counts:

- lost: acknowledged reports that never arrived, or arrived damaged;
- duplicated: reports the destination holds more than one copy of;
- leftover: files left in the station's outbox, partial files anywhere, unfinished deliveries.

A report sealed and queued just before a kill, but not yet acknowledged, is sent again as a new report
(the nurse never saw "sent"); such reports are counted as "unacknowledged, delivered", not as duplicates.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ABANDONED_AFTER = 1.0


def _config_text(root: Path) -> str:
    return f"""
[station]
id = "crash-station"
data_dir = "{root / "data"}"

[[destination]]
name = "share"
type = "folder"
path = "{root / "share"}"
encryption = "passphrase"
passphrase_file = "{root / "share.key"}"
"""


def station(root: Path, first: int, last: int) -> None:
    """Send reports first..last-1, printing `ACK <index> <report-id>` after each, then drain the outbox."""
    from kiosk import config as config_module
    from kiosk import station as station_module
    from kiosk.outbox.store import Outbox
    from kiosk.outbox.worker import OutboxWorker
    from kiosk.pipeline import PhotoInput, assemble_report, seal_and_queue
    from kiosk.report.model import Patient, Staff, Station
    from tests.factories import make_jpeg, sample_consent

    config = config_module.load(root / "kiosk.toml")
    worker = OutboxWorker(
        config.station.data_dir, station_module.destinations(config), abandoned_after_seconds=ABANDONED_AFTER
    )
    worker.start()
    outbox = Outbox(config.station.data_dir)
    for index in range(first, last):
        report = assemble_report(
            station=Station(id="crash-station", software_version="bench"),
            staff=Staff(id="RN-1"),
            patient=Patient(mrn=f"CRASH-{index}"),
            consent=sample_consent(),
            photos=[PhotoInput(data=make_jpeg(640, 480, seed=index), name="p.jpg")],
        )
        seal_and_queue(report, config.destination, config, outbox)
        print(f"ACK {index} {report.report_id}", flush=True)
        worker.wake()
    while outbox.deliveries(states=("pending", "sending")) or any(outbox.folder.iterdir()):
        time.sleep(0.05)
        worker.wake()
    print("DONE", flush=True)
    worker.stop()


def _run_station(
    root: Path, first: int, last: int, kill_after: float | None
) -> tuple[list[tuple[int, str]], bool]:
    """The acknowledgements the station printed, and whether it was killed."""
    command = [sys.executable, __file__, "--station", str(root), str(first), str(last)]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.DEVNULL)
        killed = False
        try:
            process.wait(timeout=kill_after if kill_after is not None else 600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
        output.seek(0)
        lines = output.read().decode().splitlines()
    return [(int(line.split()[1]), line.split()[2]) for line in lines if line.startswith("ACK ")], killed


def _open(path: Path, key_file: Path) -> str:
    """The MRN inside a delivered sealed report (raises if it is damaged)."""
    from kiosk.report.bundle import read_bundle
    from kiosk.sealing import passphrase
    from kiosk.sealing.sealed_file import decrypt_payload, read_sealed

    with path.open("rb") as source:
        sealed = read_sealed(source)
        plaintext = io.BytesIO()
        decrypt_payload(source, sealed, plaintext, passphrase=passphrase.read_file(key_file))
    return str(json.loads(read_bundle(plaintext.getvalue())["report.json"])["patient"]["mrn"])


def crash_test(sends: int, kills: int, seed: int) -> dict[str, object]:
    from kiosk.sealing import passphrase

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kiosk-crash-") as folder:
        root = Path(folder)
        (root / "share").mkdir()
        passphrase.write_new_file(root / "share.key")
        (root / "kiosk.toml").write_text(_config_text(root))
        acknowledged: dict[int, str] = {}
        started = time.perf_counter()
        kills_landed = 0
        while kills_landed < kills and len(acknowledged) < sends:
            # Start-up takes about half a second of imports; sends take ~50 ms each, so kills land mid-work.
            acks, killed = _run_station(root, len(acknowledged), sends, kill_after=rng.uniform(0.5, 1.3))
            acknowledged.update(acks)
            kills_landed += killed
        acks, _ = _run_station(root, len(acknowledged), sends, kill_after=None)
        acknowledged.update(acks)
        elapsed = time.perf_counter() - started

        delivered = sorted((root / "share").glob("*.cpseal"))
        by_id = {p.stem: p for p in delivered}
        lost = 0
        for index, report_id in acknowledged.items():
            path = by_id.get(report_id)
            try:
                if path is None or _open(path, root / "share.key") != f"CRASH-{index}":
                    lost += 1
            except ValueError:
                lost += 1
        mrns = [_open(p, root / "share.key") for p in delivered]
        duplicated = len(delivered) - len(by_id)  # same report id twice (cannot be for a folder)
        unacknowledged = len(set(by_id) - set(acknowledged.values()))
        leftovers = [p for p in (root / "data" / "outbox").iterdir()] + list(root.rglob("*.partial"))
        from kiosk.outbox.store import Outbox

        store = Outbox(root / "data")
        unfinished = store.deliveries(states=("pending", "sending", "failed"))
        chain = store.verify_audit()
        store.close()
        return {
            "sends": sends,
            "kills": kills_landed,
            "acknowledged": len(acknowledged),
            "delivered": len(delivered),
            "lost": lost,
            "duplicated": duplicated,
            "leftover": len(leftovers) + len(unfinished),
            "unacknowledged_delivered": unacknowledged,
            "distinct_patients_delivered": len(set(mrns)),
            "audit_chain_intact": not chain,
            "seconds": round(elapsed, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--station", nargs=3, metavar=("ROOT", "FIRST", "LAST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.station:
        station(Path(args.station[0]), int(args.station[1]), int(args.station[2]))
        return
    result = crash_test(args.sends, args.kills, args.seed)
    if args.json:
        print(json.dumps(result))
        return
    for name, value in result.items():
        print(f"{name:28} {value}")
    print("target: lost 0, duplicated 0, leftover 0")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
