"""Reader for the official RNCryptor v3 test-vector files in ../shared/vectors/rncryptor-v3/."""

from __future__ import annotations

from pathlib import Path

VECTOR_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "rncryptor-v3"
LOCAL_COPY = Path(__file__).resolve().parent / "data" / "rncryptor-v3"


def vector_dir() -> Path:
    # CI clones the repo with shared/ beside it; the copy in tests/data keeps the suite runnable without it.
    return VECTOR_DIR if VECTOR_DIR.is_dir() else LOCAL_COPY


def load(kind: str) -> list[dict[str, str]]:
    """Records of one file (password, key or kdf): blank-line separated `name: value` lines."""
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for raw in (vector_dir() / kind).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            if current:
                records.append(current)
                current = {}
            continue
        name, _, value = line.partition(":")
        current[name.strip()] = value.strip()
    if current:
        records.append(current)
    return [r for r in records if r.get("version") == "3"]


def hex_value(record: dict[str, str], name: str) -> bytes:
    return bytes.fromhex("".join(record.get(name, "").split()))
