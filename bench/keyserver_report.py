"""Tables and target verdicts for bench/keyserver.py."""

from __future__ import annotations

import os
import statistics
from typing import Any


def _table(head: tuple[str, ...], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def _server(r: dict[str, Any]) -> str:
    return f"{r['backend']} ({r['workers']}x{r['threads']}{'' if r['pinned'] else ', not pinned'})"


def _no_audit(r: dict[str, Any]) -> str:
    """The bench-only unwrap without database and audit (bench/keyserver_ceiling.py), if measured."""
    if not r.get("no_audit"):
        return "—"
    return f"{r['no_audit']['rate']:.0f} ({r['no_audit']['rate'] / r['noop']['rate']:.0%})"


def report(
    closed: list[dict[str, Any]], open_: list[dict[str, Any]], alternating: list[dict[str, Any]], args: Any
) -> None:
    where = f"{os.cpu_count()} CPUs, clients on the same machine"
    if closed:
        print(
            f"\nClosed loop (saturation: N connections back to back, {args.seconds:g} s per measurement, "
            f"{where}). Rates are capacity; latency here is queueing (N / rate), not the server's latency.\n"
        )
        _table(
            (
                "backend (workers x threads)",
                "clients",
                "round",
                "no-op req/s",
                "unwrap req/s",
                "without audit req/s (vs no-op)",
                "unwrap p50 ms",
                "unwrap p99 ms",
                "server CPU ms/req no-op / without audit / unwrap",
                "of which PostgreSQL",
                "client CPU ms/req no-op / unwrap",
                "vs no-op",
                "audited = answered",
            ),
            [
                [
                    _server(r),
                    r["concurrency"],
                    r["round"],
                    f"{r['noop']['rate']:.0f}",
                    f"{r['unwrap']['rate']:.0f}",
                    _no_audit(r),
                    f"{r['unwrap']['p50']:.1f}",
                    f"{r['unwrap']['p99']:.1f}",
                    f"{r['noop']['cpu_ms']:.2f} / "
                    f"{r['no_audit']['cpu_ms'] if r.get('no_audit') else float('nan'):.2f} / "
                    f"{r['unwrap']['cpu_ms']:.2f}",
                    f"{r['unwrap']['db_cpu_ms']:.2f}",
                    f"{r['noop']['client_cpu_ms']:.2f} / {r['unwrap']['client_cpu_ms']:.2f}",
                    f"{r['ratio']:.0%}",
                    f"{r['audited']} = {r['unwrap']['ok']}",
                ]
                for r in closed
            ],
        )
    if alternating:
        _alternating_table(alternating, where)
    if open_:
        print(
            f"\nOpen loop (constant offered rate spread over N connections, {args.open_seconds:g} s per "
            f"measurement, {where}). Latency from each request's scheduled send time.\n"
        )
        _table(
            (
                "backend (workers x threads)",
                "connections",
                "offered req/s",
                "no-op answered req/s",
                "no-op p50 / p99 ms",
                "unwrap answered req/s",
                "unwrap p50 / p90 / p99 / max ms",
                "server CPU ms/req no-op / unwrap",
                "audited = answered",
            ),
            [
                [
                    _server(r),
                    r["connections"],
                    f"{r['offered']:.0f}",
                    f"{r['noop']['rate']:.0f}",
                    f"{r['noop']['p50']:.1f} / {r['noop']['p99']:.1f}",
                    f"{r['unwrap']['rate']:.0f}",
                    f"{r['unwrap']['p50']:.1f} / {r['unwrap']['p90']:.1f} / {r['unwrap']['p99']:.1f} / "
                    f"{r['unwrap']['max']:.0f}",
                    f"{r['noop']['cpu_ms']:.2f} / {r['unwrap']['cpu_ms']:.2f}",
                    f"{r['audited']} = {r['unwrap']['ok']}",
                ]
                for r in open_
            ],
        )
    verdicts(closed, open_, alternating)


def _alternating_table(alternating: list[dict[str, Any]], where: str) -> None:
    r0 = alternating[0]
    print(
        f"\nClosed loop, alternating: no-op and unwrap in turn, {r0['slices'] // 2} slices of "
        f"{r0['slice_seconds']:g} s each with {r0['gap_seconds']:g} s between, in one run ({where}). Both "
        "endpoints see the machine in the same state; a rate counts requests completed inside its slices.\n"
    )
    _table(
        (
            "backend (workers x threads)",
            "clients",
            "no-op req/s",
            "unwrap req/s",
            "vs no-op",
            "slice pairs: median (min–max)",
            "audited = answered",
        ),
        [
            [
                _server(r),
                r["concurrency"],
                f"{r['noop']['rate']:.0f}",
                f"{r['unwrap']['rate']:.0f}",
                f"{r['ratio']:.0%}",
                _spread(r["pair_ratios"]),
                f"{r['audited']} = {r['unwrap']['ok']}",
            ]
            for r in alternating
        ],
    )


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0%} ({min(values):.0%}–{max(values):.0%})"


def verdicts(
    closed: list[dict[str, Any]], open_: list[dict[str, Any]], alternating: list[dict[str, Any]]
) -> None:
    """The issue's targets, each against the measurement that answers it (PostgreSQL rows only)."""
    pg_closed = [r for r in closed if r["backend"] == "postgresql"]
    pg_open = [r for r in open_ if r["backend"] == "postgresql" and r["offered"] >= 500]
    if not (pg_closed or pg_open):
        return
    print("\nTargets (PostgreSQL):")

    def line(ok: bool, text: str) -> None:
        print(f"  [{'met' if ok else 'NOT met'}] {text}")

    for concurrency in sorted({r["concurrency"] for r in pg_closed}):
        rounds = [r for r in pg_closed if r["concurrency"] == concurrency]
        rates = [r["unwrap"]["rate"] for r in rounds]
        ratios = [r["ratio"] for r in rounds]
        of = f"closed loop, {concurrency} clients, median of {len(rounds)} round(s)"
        each = ", ".join(f"{x:.0%}" for x in ratios)
        rate, ratio = statistics.median(rates), statistics.median(ratios)
        line(
            rate >= 500,
            f">= 500 unwraps/s — {of}: {rate:.0f}/s (rounds: {', '.join(f'{x:.0f}' for x in rates)})",
        )
        # Met only if the rounds' median AND the alternating run (if measured) both reach it.
        mixed = [
            r["ratio"]
            for r in alternating
            if r["backend"] == "postgresql" and r["concurrency"] == concurrency
        ]
        also = f"; alternating slices: {mixed[0]:.0%}" if mixed else ""
        line(
            ratio >= 0.5 and all(m >= 0.5 for m in mixed),
            f">= 50 % of the no-op rate — {of}: {ratio:.0%} (rounds: {each}){also}",
        )
        ceilings = [r["no_audit"]["rate"] / r["noop"]["rate"] for r in rounds if r.get("no_audit")]
        if ceilings:
            print(
                f"          for comparison, the same requests without database and audit: "
                f"{statistics.median(ceilings):.0%} of the no-op "
                f"(rounds: {', '.join(f'{x:.0%}' for x in ceilings)})"
            )
    for r in pg_open:
        u = r["unwrap"]
        kept = u["rate"] >= 0.97 * r["offered"] and u["errors"] == 0
        line(
            kept and u["p99"] <= 50,
            f"p99 <= 50 ms at {r['offered']:.0f} unwraps/s — open loop, {r['connections']} connections: "
            f"p99 {u['p99']:.1f} ms, {u['rate']:.0f}/s answered",
        )
    rows = closed + open_ + alternating
    line(
        all(r["audited"] == r["unwrap"]["ok"] for r in rows),
        "audit rows = unwraps answered — every measurement above, both loops and the alternating run",
    )
