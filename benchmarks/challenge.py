"""Active liveness (issue 21): challenge check time per bundle, against the pipeline's own
`capture_bundle` on the same frames.

    python -m benchmarks.challenge [--quick] [--rounds N]

A real runtime (default pack, SQLite file, local keyring) in this process. The bundle is five
real frames: t1.jpg's third face from the left (near frontal), then turned left, back to
about the centre, right and left again by `tests.models.head_turns` (synthetic turns of the
real photo), JPEG q92, answering the challenge `turn_left, turn_right, turn_left`. Rows, each
round timing every one in turns (`time_alternating`):

* ``judge`` — `evaluate_bundle` alone: poses, sequence, embedding consistency, near-duplicate
  check, on frames the pipeline already detected and embedded (what a request adds on top
  of the capture, the nonce aside);
* ``check`` — `check_challenge`: the nonce used up in the database (conditional UPDATE and
  its audit row, one transaction) plus ``judge``; challenges are issued before the round;
* ``decode_and_check`` — `challenge_frames` (the accepted frames decoded again) plus
  ``check``: what `app.services.liveness` pays per bundle when it is handed bytes;
* ``capture_bundle`` (baseline) — the pipeline on the same five frames: decode, detect,
  gate, align, embed, which enroll and verify run anyway;
* ``capture_and_check`` — the whole: ``capture_bundle`` then ``decode_and_check``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import (
    print_table,
    summarise,
    throwaway_runtime,
    time_alternating,
    write_results,
)

STEPS = ["turn_left", "turn_right", "turn_left"]


def _frames(pipeline: Any) -> list[bytes]:
    import cv2
    import insightface

    from models.imaging import encode_jpeg
    from tests.models.head_turns import face_crop, turn_head, turned_frames

    photo = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    group = cv2.imread(str(photo))
    person = sorted(pipeline.detector.detect(group), key=lambda d: float(d.box[0]))[2]
    image = face_crop(group, person.box)
    face = max(pipeline.detector.detect(image), key=lambda d: d.area)
    center, left, right, _ = turned_frames(image, face.landmarks, STEPS)
    back = turn_head(image, face.landmarks, 3.0)  # about the centre again, not the same picture
    return [encode_jpeg(f, 92) for f in (center, left, back, right, left)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds (CI smoke)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.quick else 200)
    warmup = 3 if args.quick else 10

    from app.services import challenges
    from app.services.orgs import create_org

    with throwaway_runtime("challenge") as runtime:
        pipeline = runtime.pipeline
        org_id = create_org(runtime, "Benchmark Bank")[0]
        frames = _frames(pipeline)
        outcomes = pipeline.capture_bundle(frames)
        captured = challenges.challenge_frames(pipeline, frames, outcomes)
        if len(captured) != len(frames):
            raise RuntimeError([o.error for o in outcomes if o.error is not None])
        verdict = challenges.evaluate_bundle(STEPS, captured, pipeline.threshold)
        if not verdict.passed:
            raise RuntimeError(f"the benchmark bundle does not pass: {verdict.reasons}")
        # Each check uses one challenge up: issue them all before timing.
        nonces = [
            challenges.create_challenge(runtime, org_id, sequence=STEPS).nonce
            for _ in range(3 * (rounds + warmup))
        ]

        def check(frames_: Any) -> None:
            result = challenges.check_challenge(runtime, org_id, nonces.pop(), frames_)
            assert result.passed, result.reasons

        def decode_and_check() -> None:
            check(challenges.challenge_frames(pipeline, frames, outcomes))

        def capture_and_check() -> None:
            fresh = pipeline.capture_bundle(frames)
            check(challenges.challenge_frames(pipeline, frames, fresh))

        timings = time_alternating(
            {
                "judge": lambda: challenges.evaluate_bundle(STEPS, captured, pipeline.threshold),
                "check": lambda: check(captured),
                "decode_and_check": decode_and_check,
                "capture_bundle": lambda: pipeline.capture_bundle(frames),
                "capture_and_check": capture_and_check,
            },
            rounds,
            warmup,
        )
    results = {name: summarise(t, warmup) for name, t in timings.items()}
    base = results["capture_bundle"]["p50_ms"]
    print_table(
        f"Challenge check per 5-frame bundle vs the pipeline's capture_bundle "
        f"(interleaved, {rounds} rounds, SQLite)",
        ["step", "p50 ms", "p95 ms", "vs capture_bundle"],
        [
            [name, f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p50_ms'] / base:.3f}x"]
            for name, r in results.items()
        ],
    )
    write_results(
        "challenge",
        {
            "baseline": "FacePipeline.capture_bundle on the same 5 frames, interleaved",
            "rounds": rounds,
            "quick": args.quick,
            "frames": len(frames),
            "frame_bytes": [len(f) for f in frames],
            "sequence": STEPS,
            "poses": [[p.yaw, p.pitch, p.movement] for p in verdict.poses],
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
