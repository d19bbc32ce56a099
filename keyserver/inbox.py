"""The inbox: sealed reports uploaded by stations, kept for a retention period, then deleted.

Only sealed bytes are stored (validated with ``read_sealed`` first); the key server never decrypts them.
Files live in ``inbox_dir`` named by report id; metadata and expiry are in the database. Expired files are
removed by ``keyserver inbox purge`` (run it from a timer) and also, at most once an hour per process, when
a station uploads (so a demo without timers still honours retention). Every download is audited before
its first byte is sent (open_for_download).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine, delete, select

from keyserver import audit, reports
from keyserver.db import aware, utcnow, write
from keyserver.models import inbox_files
from keyserver.reports import Denied
from keyserver.users import Principal
from kiosk.sealing.sealed_file import PAYLOAD_ENTRY, InvalidSealedFile, read_sealed

PURGE_INTERVAL_S = 3600
_last_purge = 0.0


def stored_path(inbox_dir: Path, report_id: str) -> Path:
    return inbox_dir / f"{report_id}.cpseal"


def _receipt(row: Any) -> dict[str, Any]:
    return {
        "report_id": row["report_id"],
        "sha256": row["sha256"],
        "size": row["size"],
        "received_at": aware(row["uploaded_at"]).isoformat(),  # type: ignore[union-attr]
        "expires_at": aware(row["expires_at"]).isoformat(),  # type: ignore[union-attr]
    }


def upload(
    engine: Engine,
    inbox_dir: Path,
    station: Principal,
    stream: BinaryIO,
    *,
    max_bytes: int,
    retention_days: int,
    ip: str | None,
) -> tuple[int, dict[str, Any]]:
    """Validate and store one sealed file; (201, receipt) new, (200, receipt) identical re-upload."""
    inbox_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=inbox_dir)
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "w+b") as handle:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise Denied(413, "too_large", "the file is larger than the upload limit")
                digest.update(chunk)
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            try:
                sealed = read_sealed(handle)
                _check_crc(handle)
            except InvalidSealedFile as exc:
                raise Denied(400, "invalid_sealed_file", str(exc)) from exc
        header = sealed.header
        if header.encryption != "envelope":
            raise Denied(400, "not_envelope", "only key-server (envelope) reports go to the inbox")
        sha = digest.hexdigest()
        with write(engine) as conn:
            existing = conn.execute(select(inbox_files).where(inbox_files.c.report_id == header.report_id))
            row = existing.mappings().first()
            if row is not None:
                if row["sha256"] != sha:
                    raise Denied(409, "conflict", "a different file was already uploaded for this report")
                return 200, _receipt(row)
            reports.register(conn, station, header, ip=ip)
            now = utcnow()
            values = {
                "report_id": header.report_id,
                "station_id": station.name,
                "sha256": sha,
                "size": size,
                "stored_name": stored_path(inbox_dir, header.report_id).name,
                "uploaded_at": now,
                "expires_at": now + dt.timedelta(days=retention_days),
            }
            conn.execute(inbox_files.insert().values(**values))
            audit.append(
                conn,
                actor=station.actor,
                action="inbox.upload",
                outcome="ok",
                report_id=header.report_id,
                details={"sha256": sha, "size": size, "ip": ip},
            )
            # Rename inside the transaction: if the commit fails the file is orphaned (and purged),
            # never a DB row pointing at nothing.
            os.replace(tmp, stored_path(inbox_dir, header.report_id))
        return 201, _receipt(values)
    finally:
        tmp.unlink(missing_ok=True)


def _check_crc(handle: BinaryIO) -> None:
    """The zip CRC of the payload: catches corruption in transit. (The payload's HMAC needs the data key,
    which the server does not use here; recipients verify it when they open the report.)"""
    handle.seek(0)
    try:
        with zipfile.ZipFile(handle) as container, container.open(PAYLOAD_ENTRY) as entry:
            while entry.read(1 << 20):
                pass
    except zipfile.BadZipFile as exc:
        raise InvalidSealedFile(f"the encrypted payload is damaged ({exc})") from exc


def purge(engine: Engine, inbox_dir: Path, *, actor: str, now: dt.datetime | None = None) -> int:
    """Delete expired inbox files and rows; also stray temp files. Returns how many reports were purged."""
    global _last_purge
    _last_purge = time.monotonic()
    now = now or utcnow()
    with write(engine) as conn:
        expired = [
            r.report_id
            for r in conn.execute(select(inbox_files.c.report_id).where(inbox_files.c.expires_at <= now))
        ]
        if expired:
            conn.execute(delete(inbox_files).where(inbox_files.c.report_id.in_(expired)))
            audit.append(
                conn, actor=actor, action="inbox.purge", outcome="ok", details={"count": len(expired)}
            )
    for report_id in expired:
        stored_path(inbox_dir, report_id).unlink(missing_ok=True)
    if inbox_dir.is_dir():
        with write(engine) as conn:
            known = {r.stored_name for r in conn.execute(select(inbox_files.c.stored_name))}
        for path in inbox_dir.iterdir():
            # Only old leftovers: a fresh one may belong to an upload that is committing right now.
            old = time.time() - path.stat().st_mtime > 3600
            if old and (
                path.name.startswith(".upload-") or (path.suffix == ".cpseal" and path.name not in known)
            ):
                path.unlink(missing_ok=True)
    return len(expired)


def maybe_purge(engine: Engine, inbox_dir: Path) -> None:
    if time.monotonic() - _last_purge > PURGE_INTERVAL_S or _last_purge == 0.0:
        purge(engine, inbox_dir, actor="system:purge")


def file_for(conn: Connection, inbox_dir: Path, report_id: str) -> Path | None:
    row = conn.execute(
        select(inbox_files.c.stored_name).where(
            inbox_files.c.report_id == report_id, inbox_files.c.expires_at > utcnow()
        )
    ).first()
    return inbox_dir / row.stored_name if row else None


def open_for_download(
    conn: Connection, inbox_dir: Path, report_id: str, *, actor: str, ip: str | None
) -> BinaryIO | None:
    """Open the inbox copy of a report and append its ``inbox.download`` record, in the caller's write
    transaction; None when the report is not (or no longer) in the inbox (nothing is recorded then).

    The file is opened before the record is written, so a record always means bytes were there to send;
    the caller must commit before sending them (no audit record, no data) and close the handle if the
    commit fails.
    """
    row = conn.execute(
        select(inbox_files.c.stored_name, inbox_files.c.sha256, inbox_files.c.size).where(
            inbox_files.c.report_id == report_id, inbox_files.c.expires_at > utcnow()
        )
    ).first()
    if row is None:
        return None
    try:
        handle = open(inbox_dir / row.stored_name, "rb")  # noqa: SIM115 (the response closes it)
    except FileNotFoundError:
        return None
    try:
        audit.append(
            conn,
            actor=actor,
            action="inbox.download",
            outcome="ok",
            report_id=report_id,
            details={"sha256": row.sha256, "size": row.size, "ip": ip},
        )
    except BaseException:
        handle.close()
        raise
    return handle
