"""Sealing throughput and memory, against raw AES-256-CBC + HMAC-SHA256 over the same bytes.

    .venv/bin/python bench/seal.py [--photos 5 20] [--repeat 3]

For each report size it generates 12 MP photos (4056x3040 JPEG), then, in a fresh process:
- seals the report the way the station does (bundle with PDF, JSON, XML -> RNCryptor -> atomic file),
- encrypts the same number of bytes with raw AES-256-CBC + HMAC-SHA256 (the baseline),
- reports the peak RSS growth while sealing.
Targets: sealing >= 50 % of the raw crypto rate; RSS growth <= 64 MB whatever the photo count.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, HEIGHT = 4056, 3040
CHUNK = 1 << 20


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    # ru_maxrss survives fork and exec, so it would report the parent's peak; VmHWM can be reset.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _generate(folder: Path, count: int) -> list[Path]:
    from tests.factories import make_jpeg

    paths = []
    for index in range(count):
        path = folder / f"photo-{index:02d}.jpg"
        if not path.exists():
            path.write_bytes(make_jpeg(WIDTH, HEIGHT, quality=92, seed=index))
        paths.append(path)
    return paths


def _raw_crypto_seconds(total: int) -> float:
    from cryptography.hazmat.primitives import hashes, hmac, padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    block = os.urandom(CHUNK)
    start = time.perf_counter()
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CBC(os.urandom(16))).encryptor()
    padder = padding.PKCS7(128).padder()
    mac = hmac.HMAC(os.urandom(32), hashes.SHA256())
    remaining = total
    while remaining > 0:
        piece = block if remaining >= CHUNK else block[:remaining]
        mac.update(encryptor.update(padder.update(piece)))
        remaining -= len(piece)
    mac.update(encryptor.update(padder.finalize()) + encryptor.finalize())
    mac.finalize()
    return time.perf_counter() - start


def _raw_write_seconds(folder: Path, total: int) -> float:
    """Baseline for the disk: write and fsync the same number of bytes, no crypto."""
    block = os.urandom(CHUNK)
    path = folder / "baseline.bin"
    start = time.perf_counter()
    with path.open("wb") as handle:
        for offset in range(0, total, CHUNK):
            handle.write(block[: min(CHUNK, total - offset)])
        handle.flush()
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def _measure(paths: list[str], repeat: int, disk: str, queue: multiprocessing.Queue) -> None:
    from kiosk import fsutil
    from kiosk.report.bundle import write_bundle
    from kiosk.report.model import make_photo
    from kiosk.sealing import envelope
    from kiosk.sealing.sealed_file import EnvelopeSealer, write_sealed
    from tests.factories import CREATED_AT, sample_report

    photos = [
        make_photo(i, Path(p).read_bytes(), WIDTH, HEIGHT, CREATED_AT) for i, p in enumerate(paths, start=1)
    ]
    report = sample_report(photo_count=1).model_copy(update={"photos": photos})
    kek = envelope.PublicKek(1, envelope.generate_kek().public_key(), "https://keys.example.test")

    def seal(target: Path, which: object) -> float:
        start = time.perf_counter()
        with fsutil.atomic_writer(target) as handle:
            write_sealed(
                handle,
                lambda sink: write_bundle(which, sink),  # type: ignore[arg-type]
                EnvelopeSealer(kek),
                report_id=report.report_id,
                station_id="bench",
                created_at="2026-01-01T00:00:00Z",
            )
        return time.perf_counter() - start

    row: dict[str, float] = {"photos": len(photos), "photo_mb": sum(len(p.jpeg) for p in photos) / 2**20}
    for label, parent in (("tmpfs", "/dev/shm"), ("disk", disk)):
        with tempfile.TemporaryDirectory(dir=parent) as folder:
            seal(Path(folder) / "warm-up.cpseal", sample_report())  # imports, fonts, caches
            _reset_peak_rss()
            rss_before = _status_mb("VmRSS")
            times = [seal(Path(folder) / f"report-{n}.cpseal", report) for n in range(repeat)]
            row[f"rss_{label}"] = _status_mb("VmHWM") - rss_before
            row[f"seal_{label}"] = min(times)
            size = (Path(folder) / "report-0.cpseal").stat().st_size
            if label == "disk":
                row["write_disk"] = min(_raw_write_seconds(Path(folder), size) for _ in range(repeat))
    row["sealed_mb"] = size / 2**20
    row["raw_crypto"] = min(_raw_crypto_seconds(size) for _ in range(repeat))
    queue.put(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--disk", type=Path, default=Path.cwd(), help="where the outbox would live")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kiosk-bench-photos")
    args = parser.parse_args()
    args.cache.mkdir(exist_ok=True)
    paths = _generate(args.cache, max(args.photos))

    print(
        f"{'photos':>6} {'photo MB':>8} {'sealed MB':>9} | "
        f"{'raw crypto':>10} {'seal tmpfs':>10} {'ratio':>5} | "
        f"{'raw+write':>9} {'seal disk':>9} {'ratio':>5} | "
        f"{'RSS +MB':>7}   (rates in MB/s, best of {args.repeat})"
    )
    context = multiprocessing.get_context("spawn")
    for count in args.photos:
        queue: multiprocessing.Queue = context.Queue()
        job = ([str(p) for p in paths[:count]], args.repeat, str(args.disk), queue)
        worker = context.Process(target=_measure, args=job)
        worker.start()
        r = queue.get()
        worker.join()
        mb = r["sealed_mb"]
        raw, tmpfs = mb / r["raw_crypto"], mb / r["seal_tmpfs"]
        raw_disk, disk = mb / (r["raw_crypto"] + r["write_disk"]), mb / r["seal_disk"]
        rss = max(r["rss_tmpfs"], r["rss_disk"])
        print(
            f"{r['photos']:>6.0f} {r['photo_mb']:>8.1f} {mb:>9.1f} | "
            f"{raw:>10.0f} {tmpfs:>10.0f} {tmpfs / raw:>5.0%} | "
            f"{raw_disk:>9.0f} {disk:>9.0f} {disk / raw_disk:>5.0%} | {rss:>7.1f}"
        )
    print("targets: seal >= 50 % of the raw rate; RSS growth <= 64 MB whatever the photo count")


if __name__ == "__main__":
    main()
