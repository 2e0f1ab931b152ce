"""Crypto figures: envelope seal/open vs raw AES-GCM, DEK wraps/s, bulk rewrap, API-key timing.

    python benchmarks/crypto.py [--quick] [--no-softhsm]

Prints a table and writes benchmarks/results/crypto-<date>.json. SoftHSM2 runs on a token
initialised in a temporary directory (like the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto import (
    EnvelopeCipher,
    InvalidApiKeyError,
    KeyManager,
    LocalKeyring,
    Purpose,
    RewrapItem,
    RootKey,
    Scope,
    StoredApiKey,
    authenticate_api_key,
    generate_api_key,
    rewrap_all,
)
from benchmarks.common import emit

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
)
ORG = "bench-org"
FRAME_SIZE = 200 * 1024


def p50_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(20, n)):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def softhsm_kms(state_dir: Path, tmp: Path) -> KeyManager | None:
    module = next((m for m in SOFTHSM_MODULES if Path(m).is_file()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        return None
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        [util, "--init-token", "--free", "--label", "bench", "--so-pin", "1234", "--pin", "5678"],
        check=True,
        capture_output=True,
    )
    from app.crypto.hsm import Pkcs11KeyManager

    return Pkcs11KeyManager(state_dir, module=module, token_label="bench", pin="5678")


def bench_backend(kms: KeyManager, frame: bytes, n: int, n_rewrap: int) -> dict[str, Any]:
    kms.create_org(ORG)
    cipher = EnvelopeCipher(kms)
    kw = {"org_id": ORG, "object_id": "frame-1", "purpose": Purpose.FRAME}
    blob = cipher.seal(frame, **kw)  # type: ignore[arg-type]
    seal_us = p50_us(lambda: cipher.seal(frame, **kw), n)  # type: ignore[arg-type]
    # The frame path: wrapped DEK to the database, payload to the object store.
    detached_us = p50_us(lambda: cipher.seal_detached(frame, **kw), n)  # type: ignore[arg-type]
    open_us = p50_us(lambda: cipher.open(blob, **kw), n)  # type: ignore[arg-type]

    dek = os.urandom(32)
    n_wraps = n * 20
    t0 = time.perf_counter()
    for _ in range(n_wraps):
        kms.wrap_dek(ORG, dek, b"ctx")
    wraps_per_s = n_wraps / (time.perf_counter() - t0)

    # bulk rewrap: detached wrapped DEKs (as the DB stores them), rotate, rewrap all
    items = []
    for i in range(n_rewrap):
        obj = f"o{i}"
        sealed = cipher.seal_detached(b"", org_id=ORG, object_id=obj, purpose=Purpose.FRAME)
        items.append(RewrapItem(obj, Purpose.FRAME, sealed.wrapped_dek))
    kms.rotate(ORG)
    store: dict[str, bytes] = {}
    t0 = time.perf_counter()
    report = rewrap_all(
        kms, ORG, items, lambda item, data, _version: store.__setitem__(item.object_id, data)
    )
    rewrap_s = time.perf_counter() - t0
    assert report.rewrapped == n_rewrap and not report.failed
    mb = len(frame) / 1e6
    return {
        "seal_p50_us": round(seal_us, 1),
        "seal_detached_p50_us": round(detached_us, 1),
        "open_p50_us": round(open_us, 1),
        "seal_MBps": round(mb / (seal_us / 1e6), 1),
        "open_MBps": round(mb / (open_us / 1e6), 1),
        "dek_wraps_per_s": round(wraps_per_s),
        "rewrap_items": n_rewrap,
        "rewrap_total_s": round(rewrap_s, 3),
        "rewrap_per_s": round(n_rewrap / rewrap_s),
    }


def bench_raw(frame: bytes, n: int) -> dict[str, Any]:
    key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, frame, b"aad")
    enc = p50_us(lambda: AESGCM(key).encrypt(os.urandom(12), frame, b"aad"), n)
    # like the envelope, raw AES-GCM builds its cipher from the key on each message
    dec = p50_us(lambda: AESGCM(key).decrypt(nonce, ct, b"aad"), n)
    mb = len(frame) / 1e6
    return {
        "seal_p50_us": round(enc, 1),
        "open_p50_us": round(dec, 1),
        "seal_MBps": round(mb / (enc / 1e6), 1),
        "open_MBps": round(mb / (dec / 1e6), 1),
    }


def ks_statistic(a: list[int], b: list[int]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D and its asymptotic p-value."""
    a, b = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] == x:
            i += 1
        while j < len(b) and b[j] == x:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def bench_api_key_timing(n: int) -> dict[str, Any]:
    plaintext, key_id, secret_hash = generate_api_key()
    stored = StoredApiKey(str(key_id), "org", secret_hash, frozenset({Scope.MATCH}))  # type: ignore[arg-type]
    table = {stored.key_id: stored}
    key = str(plaintext)
    start = len(key) - 52
    wrong_prefix = key[:start] + ("a" if key[start] != "a" else "b") + key[start + 1 :]
    wrong_suffix = key[:-1] + ("a" if key[-1] != "a" else "b")
    now = datetime.now(UTC)
    samples: dict[str, list[int]] = {"prefix": [], "suffix": []}
    rng = random.Random(0)
    order = ["prefix", "suffix"] * n
    rng.shuffle(order)  # interleave so drift affects both alike
    for which in order:
        candidate = wrong_prefix if which == "prefix" else wrong_suffix
        t0 = time.perf_counter_ns()
        with contextlib.suppress(InvalidApiKeyError):
            authenticate_api_key(candidate, table.get, now=now)
        samples[which].append(time.perf_counter_ns() - t0)
    d, p = ks_statistic(samples["prefix"], samples["suffix"])
    return {
        "samples_each": n,
        "wrong_prefix_median_ns": statistics.median(samples["prefix"]),
        "wrong_suffix_median_ns": statistics.median(samples["suffix"]),
        "ks_D": round(d, 4),
        "ks_p": round(p, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke run)")
    ap.add_argument("--no-softhsm", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    n = 50 if args.quick else 400
    n_rewrap = 10_000 if args.quick else 100_000
    frame = random.Random(1).randbytes(FRAME_SIZE)

    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "frame_bytes": FRAME_SIZE,
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        results["raw_aesgcm"] = bench_raw(frame, n)
        local = LocalKeyring(t / "local", RootKey(os.urandom(32), source="bench"))
        results["local"] = bench_backend(local, frame, n, n_rewrap)
        hsm = None if args.no_softhsm else softhsm_kms(t / "hsm-state", t)
        if hsm is not None:
            results["softhsm"] = bench_backend(hsm, frame, n, n_rewrap)
            hsm.close()
    results["local_seal_over_raw"] = round(
        results["local"]["seal_p50_us"] / results["raw_aesgcm"]["seal_p50_us"], 3
    )
    results["local_seal_detached_over_raw"] = round(
        results["local"]["seal_detached_p50_us"] / results["raw_aesgcm"]["seal_p50_us"], 3
    )
    results["local_open_over_raw"] = round(
        results["local"]["open_p50_us"] / results["raw_aesgcm"]["open_p50_us"], 3
    )
    results["api_key_timing"] = bench_api_key_timing(2_000 if args.quick else 20_000)

    cols = ["raw_aesgcm", "local", "softhsm"]
    rows = [
        "seal_p50_us",
        "seal_detached_p50_us",
        "open_p50_us",
        "seal_MBps",
        "open_MBps",
        "dek_wraps_per_s",
        "rewrap_items",
        "rewrap_total_s",
        "rewrap_per_s",
    ]
    print(f"{'200 KB frame':<18}" + "".join(f"{c:>14}" for c in cols))
    for r in rows:
        cells = "".join(f"{results.get(c, {}).get(r, '-')!s:>14}" for c in cols)
        print(f"{r:<18}{cells}")
    print(
        f"envelope/raw (local): seal {results['local_seal_over_raw']}x, "
        f"seal detached (frames) {results['local_seal_detached_over_raw']}x, "
        f"open {results['local_open_over_raw']}x (target <= 1.5x)"
    )
    timing = results["api_key_timing"]
    print(
        f"API key wrong-prefix vs wrong-suffix: median {timing['wrong_prefix_median_ns']} ns vs "
        f"{timing['wrong_suffix_median_ns']} ns, KS D={timing['ks_D']} p={timing['ks_p']} "
        f"(n={timing['samples_each']} each)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"crypto-{datetime.now(UTC):%Y-%m-%d}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    emit(results)


if __name__ == "__main__":
    main()
