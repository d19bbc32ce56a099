"""`kiosk scan IMAGE... [--json]`: decode image files, for testing cameras, wristbands and scan rules.

Printing the decoded text to stdout is this tool's purpose; nothing here logs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from kiosk.scan.decode import Code, Scanner
from kiosk.scan.payload import ScanRule, gs1_hri, parse_payload


def _rules(ctx: click.Context) -> list[ScanRule]:
    """`[[scan_rule]]`s from the configuration, if one was named explicitly (scanning needs no config)."""
    path = (ctx.find_root().obj or {}).get("config_path") if ctx.find_root().obj else None
    if not path:
        return []
    from kiosk import config as config_module

    return list(getattr(config_module.load(path), "scan_rule", []) or [])


def describe(code: Code, rules: list[ScanRule]) -> dict[str, Any]:
    identity = parse_payload(code.text, gs1=code.gs1, symbology=code.format, rules=rules)
    text = (gs1_hri(code.text) or code.text) if code.gs1 else code.text
    return {
        "format": code.format,
        "text": text,
        "fields": dict(identity.fields) if identity else {},
        "kind": identity.kind if identity else None,
        "source": identity.source if identity else None,
    }


def _load(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise click.ClickException(f"{path}: no such file") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read ({exc.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise click.ClickException(f"{path}: not an image OpenCV can read")
    return image


@click.command(name="scan")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.pass_context
def scan_command(ctx: click.Context, images: tuple[Path, ...], as_json: bool) -> None:
    """Decode barcodes in image files and show the identity fields they carry.

    Supports Code 128 / GS1-128, DataMatrix (incl. GS1), PDF417, QR and Aztec. Exit 1 if any file could
    not be read (the others are still scanned).
    """
    rules = _rules(ctx)
    scanner = Scanner()
    failed = False
    for path in images:
        try:
            image = _load(path)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.message}", err=True)
            failed = True
            continue
        result = scanner.scan(image)
        codes = [describe(code, rules) for code in result.codes]
        if as_json:
            click.echo(json.dumps({"file": str(path), "codes": codes, "ms": round(result.ms, 1)}))
            continue
        if not codes:
            click.echo(f"{path}: no code found ({result.ms:.0f} ms)")
        for code in codes:
            fields = ", ".join(f"{k}={v}" for k, v in code["fields"].items())
            suffix = f"  [{code['kind']}: {fields}]" if code["kind"] else ""
            click.echo(f"{path}: {code['format']}: {code['text']}{suffix} ({result.ms:.0f} ms)")
    if failed:
        ctx.exit(1)
