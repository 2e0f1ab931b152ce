"""Backup and restore figures: `wajah backup` / `wajah restore` on PostgreSQL at 100k enrollments.

    python -m benchmarks.backup [--quick] [--size N] [--frames N] [--repeats R]

Makes a fresh database on the PostgreSQL server at ``$WAJAH_BENCH_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``, the test server) and enrolls a
synthetic gallery of 128-d vectors into one org through `benchmarks.gallery.insert_gallery`
(subject and enrollment rows with hashed references, as the bulk import writes them: no frame
and no audit row per enrollment). Then it times, `repeats` times each and in alternating order:

* ``wajah backup`` (`app.backup.backup`: snapshot, `pg_dump --format=custom --compress=1`,
  row counts, SHA-256, manifest);
* baseline: the same ``pg_dump`` command alone, and ``pg_dump`` at its default compression;
* ``wajah restore --yes`` of that backup over the same database (checksum, checks, schema
  dropped and dump replayed in one transaction through `pg_restore | psql`, migrations);
* baseline: ``pg_restore --clean --if-exists --single-transaction`` of the plain dump.

A second case adds `frames` sealed frame payloads of 64 KiB (random bytes, which is what
AES-GCM output looks like) to `sealed_objects`, where a PostgreSQL deployment keeps them,
and measures again: frames, not vectors, make up most of a real backup.

Prints a table and writes ``benchmarks/results/backup-<date>-<host>.json``. The database is
dropped at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, write_results
from benchmarks.gallery import SynthesisParams, insert_gallery

ADMIN_URL = os.environ.get(
    "WAJAH_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SEED = 20261202
DIMENSION = 128
FRAME_BYTES = 64 * 1024
STEPS = (
    "wajah backup",
    "pg_dump --compress=1",
    "pg_dump (default)",
    "wajah restore",
    "pg_restore",
)


def synthesis() -> SynthesisParams:
    """Gallery parameters near the default pack's measured scores (`benchmarks.gallery`);
    what is measured here (bytes through pg_dump) does not depend on them."""
    shared = np.random.default_rng(SEED).standard_normal(DIMENSION).astype(np.float32)
    return SynthesisParams(
        dimension=DIMENSION,
        shared=shared / np.linalg.norm(shared),
        a=0.41,
        genuine_mean=0.973,
        genuine_std=0.016,
    )


def fresh_database() -> str:
    name = f"wajah_bench_backup_{secrets.token_hex(4)}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    admin.dispose()


def populate(settings: Any, size: int) -> float:
    """One org and `size` enrollments; seconds it took."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org

    runtime = start_runtime(settings, serving=False)
    try:
        org_id, _ = create_org(runtime, "Backup Benchmark Bank")
        return insert_gallery(runtime, org_id, synthesis(), size, SEED)
    finally:
        stop_runtime(runtime)


def add_frames(url: str, count: int) -> float:
    """`count` sealed-frame payloads of `FRAME_BYTES` in `sealed_objects`; seconds."""
    from app.storage.schema import sealed_objects, utcnow

    rng = np.random.default_rng(SEED)
    engine = sa.create_engine(url)
    started = time.perf_counter()
    try:
        for first in range(0, count, 1000):
            rows = [
                {"key": f"frm_bench{n:07d}", "data": rng.bytes(FRAME_BYTES), "created_at": utcnow()}
                for n in range(first, min(count, first + 1000))
            ]
            with engine.begin() as conn:
                conn.execute(sa.insert(sealed_objects), rows)
    finally:
        engine.dispose()
    return time.perf_counter() - started


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def measure(settings: Any, work: Path, repeats: int) -> dict[str, Any]:
    """Each step `repeats` times, the order reversed every other round (a shared machine's
    drift reaches them all alike); medians, minima and dump sizes."""
    from app.backup import backup, restore

    url = libpq(settings.resolved_database_url)
    runs: dict[str, list[float]] = {name: [] for name in STEPS}
    sizes: dict[str, int] = {}
    for n in range(repeats):
        out, plain, default = work / f"b{n}", work / f"plain{n}.dump", work / f"default{n}.dump"
        dump = ["pg_dump", "--format=custom", "--schema=public", url]
        restore_plain = ["pg_restore", "--clean", "--if-exists", "--single-transaction"]
        restore_plain += ["--no-owner", f"--dbname={url}", str(plain)]
        commands = {
            "pg_dump --compress=1": [*dump, "--compress=1", f"--file={plain}"],
            "pg_dump (default)": [*dump, f"--file={default}"],
            "pg_restore": restore_plain,
        }
        for name in STEPS if n % 2 == 0 else [*STEPS[2::-1], *STEPS[:2:-1]]:
            started = time.perf_counter()
            if name == "wajah backup":
                backup(settings, out)
            elif name == "wajah restore":
                restore(settings, out, overwrite=True)
            else:
                subprocess.run(commands[name], check=True)
            runs[name].append(time.perf_counter() - started)
        sizes = {
            "wajah backup": (out / "database.dump").stat().st_size,
            "pg_dump --compress=1": plain.stat().st_size,
            "pg_dump (default)": default.stat().st_size,
        }
        shutil.rmtree(out)
        plain.unlink()
        default.unlink()
    return {
        name: {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "runs_s": [round(v, 3) for v in values],
        }
        | ({"dump_mib": round(sizes[name] / 2**20, 1)} if name in sizes else {})
        for name, values in runs.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5k enrollments, one run (CI smoke)")
    ap.add_argument("--size", type=int, help="enrollments (default 100000; --quick 5000)")
    ap.add_argument("--frames", type=int, help="64 KiB frames (default 10000; --quick 200)")
    ap.add_argument("--repeats", type=int, help="runs of each step (default 3; --quick 1)")
    args = ap.parse_args()
    size = args.size or (5_000 if args.quick else 100_000)
    frames = args.frames if args.frames is not None else (200 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 3)
    from app.settings import Settings
    from models.prepare import prepare_default_pack

    url = fresh_database()
    cases: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="wajah-bench-backup-") as tmp:
            work = Path(tmp)
            pack = prepare_default_pack(work / "models")
            settings = Settings(
                home=work / "home",
                database_url=url,
                root_key=base64.b64encode(os.urandom(32)).decode(),  # type: ignore[arg-type]
                model_cache_dir=pack.directory.parent,
            )
            insert_s = populate(settings, size)
            cases["enrollments"] = {"insert_s": round(insert_s, 2)} | measure(
                settings, work, repeats
            )
            if frames:
                frames_s = add_frames(url, frames)
                cases["enrollments_and_frames"] = {"insert_s": round(frames_s, 2)} | measure(
                    settings, work, repeats
                )
    finally:
        drop_database(url)
    report(size, frames, repeats, cases)


def report(size: int, frames: int, repeats: int, cases: dict[str, Any]) -> None:
    titles = {
        "enrollments": f"{size:,} enrollments × {DIMENSION}-d",
        "enrollments_and_frames": f"{size:,} enrollments + {frames:,} frames of 64 KiB "
        f"({frames * FRAME_BYTES / 2**30:.2f} GiB)",
    }
    ratios: dict[str, float] = {}
    for case, figures in cases.items():
        print_table(
            f"backup and restore, PostgreSQL, {titles[case]} (median of {repeats})",
            ["step", "median s", "min s", "dump MiB"],
            [
                [
                    name,
                    figures[name]["median_s"],
                    figures[name]["min_s"],
                    figures[name].get("dump_mib", ""),
                ]
                for name in STEPS
            ],
        )
        median = {name: figures[name]["median_s"] for name in STEPS}
        ratios[f"{case}: wajah backup / pg_dump --compress=1"] = round(
            median["wajah backup"] / median["pg_dump --compress=1"], 3
        )
        ratios[f"{case}: wajah restore / pg_restore"] = round(
            median["wajah restore"] / median["pg_restore"], 3
        )
    print("\nwajah over the same tool alone:")
    for key, value in ratios.items():
        print(f"  {key}: {value}")
    write_results(
        "backup",
        {
            "enrollments": size,
            "dimension": DIMENSION,
            "frames": frames,
            "frame_bytes": FRAME_BYTES,
            "repeats": repeats,
            "cases": cases,
            "ratios": ratios,
            "baseline": "the same pg_dump alone, pg_dump at default compression, "
            "pg_restore --clean --if-exists --single-transaction",
        },
    )


if __name__ == "__main__":
    main()
