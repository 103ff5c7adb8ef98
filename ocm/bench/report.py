"""
Figures from raw counts: percentiles from the workers' latency histograms,
medians over rounds, and the human-readable report.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from ocm.bench.worker import BUCKET_US, BUCKETS


def merge_histograms(histograms: Iterable[dict[str, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for h in histograms:
        for bucket, n in h.items():
            merged[int(bucket)] = merged.get(int(bucket), 0) + n
    return merged


def percentiles(histogram: dict[int, int], qs: Iterable[float]) -> dict[str, float | None]:
    """Milliseconds at each quantile (bucket midpoints; the overflow bucket is 10 s)."""
    total = sum(histogram.values())
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q * 100:g}"
        if not total:
            out[key] = None
            continue
        rank, seen = q * total, 0
        for bucket in sorted(histogram):
            seen += histogram[bucket]
            if seen >= rank:
                us = BUCKETS * BUCKET_US if bucket >= BUCKETS else (bucket + 0.5) * BUCKET_US
                out[key] = round(us / 1000, 2)
                break
    return out


def percentile_of(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _num(value: float | None, fmt: str = "{:,.0f}", none: str = "n/a") -> str:
    return none if value is None else fmt.format(value)


def format_run(r: dict[str, Any]) -> str:
    load, j, lat, cpu = r["load"], r["joins"], r["latency_ms"], r["cpu"]
    lines = [
        f"{r['server']}: {load['rooms']} rooms x {load['members']} members x {load['rate']:g} msg/s, "
        f"{load['size']}-byte text, {load['duration']:g} s measured "
        f"({load['readers']} reader(s)/room, {load['workers']} generator process(es))",
        f"  joins       {j['count']:,} in {j['seconds']:.2f} s: {j['per_s']:,.0f}/s, latency p50 "
        f"{_num(j['p50_ms'], '{:.1f}')} ms p99 {_num(j['p99_ms'], '{:.1f}')} ms "
        f"({'TLS' if j['tls'] else 'plain TCP'}, {j['concurrency']} at once; "
        + (f"{j['nodes']} nodes, {j['redirects']:,} redirected; " if j.get("nodes", 1) > 1 else "")
        + f"cpu: daemon "
        f"{_num(j['daemon_cpu_s'], '{:.1f}')} s, generator {j['generator_cpu_s']:.1f} s)",
        f"  sent        {r['sent_per_s']:,.0f} msg/s (target {r['target_per_s']:,.0f}/s)",
        f"  deliveries  {r['deliveries_per_s']:,.0f}/s (scaled from readers), "
        f"loss {r['loss_pct']:.3f}%",
        f"  latency     p50 {_num(lat['p50'], '{:.1f}')} ms  p95 {_num(lat['p95'], '{:.1f}')} ms  "
        f"p99 {_num(lat['p99'], '{:.1f}')} ms",
        f"  cpu         daemon {_num(cpu['daemon_pct'], '{:.0f}%')} of a core "
        f"({_num(cpu['daemon_us_per_delivery'], '{:.2f}')} µs/delivery), "
        f"generator {cpu['generator_pct']:.0f}%",
    ]
    if "server_cpu" in cpu:
        lines.append(
            f"  cpu{cpu['server_cpu']:<8} {cpu['server_cpu_busy_pct']:.0f}% busy, of which softirq "
            f"{cpu['server_cpu_softirq_pct']:.0f}% (mostly loopback delivery of the daemon's own sends)"
        )
    if "scrapes" in r:
        sc = r["scrapes"]
        lines.append(
            f"  metrics     scraped {sc['ok']} times ({sc['failed']} failed), "
            f"{_num(sc.get('p50_ms'), '{:.1f}')} ms p50 (request to body, seen by the bench)"
        )
    return "\n".join(lines)


def format_compare(summary: dict[str, Any]) -> str:
    med, ratios = summary["median"], summary["ratios"]
    kinds = list(med)
    others = [k for k in kinds if k != "floor"]
    rows = ["".ljust(12) + "".join(f"{k:>15}" for k in kinds)
            + "".join(f"{k + '/floor':>20}" for k in others)]

    def row(label: str, key: str, fmt: str, with_ratio: bool = False) -> None:
        cells = "".join(f"{_num(med[k].get(key), fmt):>15}" for k in kinds)
        if with_ratio:
            cells += "".join(f"{_num(ratios[k].get(key), '{:.3f}', ''):>20}" for k in others)
        rows.append(f"{label:12}{cells}")

    row("deliv/s", "deliveries_per_s", "{:,.0f}", True)
    row("loss %", "loss_pct", "{:.3f}")
    row("p50 ms", "p50_ms", "{:.1f}")
    row("p99 ms", "p99_ms", "{:.1f}")
    row("cpu %", "daemon_pct", "{:.0f}")
    row("µs/deliv", "daemon_us_per_delivery", "{:.2f}", True)
    row("gen cpu %", "generator_pct", "{:.0f}")
    return (f"medians of {summary['rounds']} round(s), {', '.join(kinds)} in turn:\n"
            + "\n".join(rows))


def headline(r: dict[str, Any]) -> dict[str, float | None]:
    """The figures a comparison takes medians of."""
    return {
        "deliveries_per_s": r["deliveries_per_s"],
        "sent_per_s": r["sent_per_s"],
        "loss_pct": r["loss_pct"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "daemon_pct": r["cpu"]["daemon_pct"],
        "daemon_us_per_delivery": r["cpu"]["daemon_us_per_delivery"],
        "generator_pct": r["cpu"]["generator_pct"],
        "joins_per_s": r["joins"]["per_s"],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per server, and each server's ratios to the floor."""
    kinds = list(dict.fromkeys(r["server"] for r in runs))
    med = {
        kind: {k: median(headline(r)[k] for r in runs if r["server"] == kind)
               for k in headline(runs[0])}
        for kind in kinds
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for kind in kinds:
        if kind == "floor":
            continue
        ratios[kind] = {}
        for key in ("deliveries_per_s", "daemon_us_per_delivery"):
            f, o = med.get("floor", {}).get(key), med[kind][key]
            ratios[kind][key] = round(o / f, 4) if f and o is not None else None
    return {
        "rounds": sum(r["server"] == "ocm" for r in runs),
        "median": med,
        "ratios": ratios,
        "ratio": ratios.get("ocm", {}),  # ocm/floor
    }
