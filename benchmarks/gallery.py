"""Synthetic galleries whose scores look like the real model's, inserted through the storage layer.

Measured first (`benchmarks.faces.measure_scores`): the default pack (YuNet + SFace, 128-d)
on eight augmented captures of each of the people in insightface's t1.jpg (five pass the
quality gate; one turns her head too far). On this machine, 2026-11-27:

    genuine  cosine: mean 0.973, std 0.016 (140 pairs; min 0.918)
    impostor cosine: mean 0.138, std 0.066 (640 pairs; max 0.279)

(Genuine pairs there are two renderings of one photograph, so real-world genuine scores
across capture sessions sit lower, typically 0.5-0.8 for SFace; the index benchmark uses
that range. Search latency does not depend on where genuine scores sit.) Every run measures
them again and derives the parameters from its own measurement; the figures above are what
the numbers below were derived from.

Model, in ``d`` dimensions:

* **identity centre** ``c = normalise(a·m + r)``: ``m`` is the unit mean of the real
  embeddings (the direction all faces share, so real probes meet the synthetic gallery at
  the impostor mean too), ``r`` an isotropic Gaussian of unit expected norm. Two centres
  then have cosine ``a²/(1+a²) ± (1/√d)/(1+a²)``; ``a² = μc/(1−μc)`` with
  ``μc = μ_impostor / μ_genuine`` (capture noise shrinks every cross-identity cosine by the
  genuine factor). For the figures above ``a² ≈ 0.165``.
* **capture** ``x = normalise(c + e)``, ``e`` Gaussian with ``E|e|² = s²``; two captures of
  one identity have cosine about ``1/(1+s²)``, so ``s² = 1/g − 1`` with ``g`` drawn per
  identity from Normal(μ_genuine, σ_genuine) clipped to [0.3, 0.995].

The impostor spread cannot go below isotropic noise in ``d`` dimensions: for 128-d the
synthetic impostor std is about 0.08 against the measured 0.066 (measured on ten person
pairs only). `check` samples both synthetic distributions so each run reports them next to
the measured ones.

Insertion goes through `app.storage.subjects.insert_subjects_bulk` and
`insert_enrollments_bulk` (one seq range and one executemany per batch) with hashed
references from the server's own `ReferenceHasher`, so the server's start-up replay
verifies and keeps every row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks.faces import ScoreDistributions

BATCH = 20_000  # rows per committed transaction


@dataclass(frozen=True)
class SynthesisParams:
    dimension: int
    shared: np.ndarray  # unit vector m
    a: float
    genuine_mean: float
    genuine_std: float

    @classmethod
    def from_scores(cls, scores: ScoreDistributions, mean_direction: np.ndarray) -> SynthesisParams:
        g = float(scores.genuine.mean())
        mu_c = min(0.9, max(0.0, float(scores.impostor.mean()) / g))
        shared = mean_direction / np.linalg.norm(mean_direction)
        return cls(
            dimension=int(shared.size),
            shared=shared.astype(np.float32),
            a=float(np.sqrt(mu_c / (1 - mu_c))),
            genuine_mean=g,
            genuine_std=float(scores.genuine.std()),
        )

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("shared")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}

    def centres(self, rng: np.random.Generator, n: int) -> np.ndarray:
        d = self.dimension
        r = rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))
        c = r + np.float32(self.a) * self.shared
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    def noise_scale(self, rng: np.random.Generator, n: int) -> np.ndarray:
        g = np.clip(rng.normal(self.genuine_mean, self.genuine_std, n), 0.3, 0.995)
        return np.sqrt(1 / g - 1).astype(np.float32)[:, None]

    def captures(self, rng: np.random.Generator, centres: np.ndarray, s: np.ndarray) -> np.ndarray:
        d = self.dimension
        e = rng.standard_normal(centres.shape, dtype=np.float32) / np.float32(np.sqrt(d))
        x = centres + s * e
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery_chunks(
    params: SynthesisParams, size: int, seed: int, first: int = 0
) -> Iterator[np.ndarray]:
    """One enrolled capture per identity for identities ``first .. size-1``, in batches.

    The same (seed, identity number) always gives the same vector, whatever ``first``.
    """
    for start in range(first - first % BATCH, size, BATCH):
        rng = np.random.default_rng([seed, start])
        n = min(BATCH, size - start)
        centres = params.centres(rng, n)
        vectors = params.captures(rng, centres, params.noise_scale(rng, n))
        skip = max(0, first - start)
        yield vectors[skip:]


def check(params: SynthesisParams, identities: int = 2000, seed: int = 7) -> dict[str, float]:
    """Genuine (two captures of one identity) and impostor cosines of the synthesis."""
    rng = np.random.default_rng(seed)
    centres = params.centres(rng, identities)
    s = params.noise_scale(rng, identities)
    one, two = params.captures(rng, centres, s), params.captures(rng, centres, s)
    genuine = np.sum(one * two, axis=1)
    impostor = np.sum(one * np.roll(two, 1, axis=0), axis=1)
    return {
        "genuine_mean": round(float(genuine.mean()), 4),
        "genuine_std": round(float(genuine.std()), 4),
        "impostor_mean": round(float(impostor.mean()), 4),
        "impostor_std": round(float(impostor.std()), 4),
    }


def insert_gallery(
    runtime: Any, org_id: str, params: SynthesisParams, size: int, seed: int, first: int = 0
) -> float:
    """Enroll synthetic identities ``first .. size-1`` of `org_id` (one subject each); seconds."""
    from app.storage import subjects as subject_store

    model_id = runtime.model_id
    started = time.perf_counter()
    number = first
    for vectors in gallery_chunks(params, size, seed, first):
        subject_ids = [f"gallery-{number + n:07d}" for n in range(len(vectors))]
        enrollment_ids = [f"emb_gallery{number + n:07d}" for n in range(len(vectors))]
        refs = [
            runtime.hasher.reference(
                org_id=org_id, model_id=model_id, enrollment_id=eid, vector=vector
            )
            for eid, vector in zip(enrollment_ids, vectors, strict=True)
        ]
        raw = [vector.astype("<f4").tobytes() for vector in vectors]
        with runtime.engine.begin() as conn:
            pks = subject_store.insert_subjects_bulk(conn, org_id=org_id, subject_ids=subject_ids)
            subject_store.insert_enrollments_bulk(
                conn,
                org_id=org_id,
                subject_pks=pks,
                vectors=raw,
                dimension=params.dimension,
                model_id=model_id,
                hashed_refs=refs,
                enrollment_ids=enrollment_ids,
            )
        number += len(vectors)
    return time.perf_counter() - started
