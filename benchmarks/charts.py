"""PNG charts from the combined results of `python -m benchmarks` (matplotlib, Agg canvas).

No pyplot: each chart is its own `Figure` on a `FigureCanvasAgg`, so nothing global changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

OPERATIONS = ("enroll", "verify", "search", "screen")


def _figure(width: float = 11, height: float = 4.5) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def latency_vs_gallery(
    load: dict[str, Any] | None, index: dict[str, Any] | None, path: Path
) -> Path:
    """Left: HTTP p50/p99 at concurrency 1 per operation; right: exact single-query search."""
    figure = _figure()
    left, right = figure.subplots(1, 2)
    if load:
        sizes = sorted(int(g) for g in load["galleries"])
        for n, op in enumerate(OPERATIONS):
            cells = [load["galleries"][str(g)]["cells"][op]["1"] for g in sizes]
            left.plot(sizes, [c["p50_ms"] for c in cells], "o-", color=f"C{n}", label=f"{op} p50")
            left.plot(sizes, [c["p99_ms"] for c in cells], ":", color=f"C{n}", label=f"{op} p99")
        left.set_title(
            f"HTTP, concurrency 1 (screen: {load['watchlist_entries']:,}-entry watchlist)",
            fontsize=10,
        )
    left.set_xscale("log")
    left.set_xlabel("enrolled gallery size")
    left.set_ylabel("latency, ms")
    left.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    if index:
        for d in sorted({r["d"] for r in index["results"]}):
            rows = sorted((r for r in index["results"] if r["d"] == d), key=lambda r: r["n"])
            ns = [r["n"] for r in rows]
            right.plot(
                ns,
                [r["float32"]["search_single"]["p50_ms"] for r in rows],
                "o-",
                label=f"wajah float32, {d}-d",
            )
            right.plot(
                ns,
                [r["float16"]["search_single"]["p50_ms"] for r in rows],
                "s-",
                label=f"wajah float16, {d}-d",
            )
            right.plot(
                ns,
                [r["faiss_flat_batch1"]["p50_ms"] for r in rows],
                "x--",
                label=f"FAISS flat, {d}-d",
            )
            right.plot(
                ns, [r["numpy_brute_force"]["p50_ms"] for r in rows], "+--", label=f"numpy, {d}-d"
            )
            right.plot(
                ns,
                [r["bandwidth_limit_ms_float32"]["one_core"] for r in rows],
                "k:",
                linewidth=1,
                label=f"float32 bandwidth limit (1 core), {d}-d",
            )
        right.set_title("exact search, one query (index suite)", fontsize=10)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("vectors in the index")
    right.set_ylabel("p50, ms")
    right.grid(True, alpha=0.3, which="both")
    right.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    return path


def throughput_vs_concurrency(load: dict[str, Any], path: Path) -> Path:
    """Left: requests/s per operation vs clients; right: p99. One line style per gallery."""
    figure = _figure()
    left, right = figure.subplots(1, 2)
    styles = ["-", "--", ":", "-."]
    for s, gallery in enumerate(sorted(load["galleries"], key=int)):
        cells = load["galleries"][gallery]["cells"]
        for n, op in enumerate(OPERATIONS):
            clients = sorted(cells[op], key=int)
            x = [int(c) for c in clients]
            label = f"{op}, gallery {int(gallery):,}"
            left.plot(
                x,
                [cells[op][c]["per_s"] for c in clients],
                "o" + styles[s % 4],
                color=f"C{n}",
                label=label,
            )
            right.plot(
                x,
                [cells[op][c]["p99_ms"] for c in clients],
                "o" + styles[s % 4],
                color=f"C{n}",
                label=label,
            )
    for axes, ylabel in ((left, "requests/s"), (right, "p99 latency, ms")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent clients (one keep-alive connection each)")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    left.set_title("throughput on loopback", fontsize=10)
    right.set_title("tail latency", fontsize=10)
    left.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    return path
