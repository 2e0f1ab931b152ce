"""Compare (issue 21): POST /v1/compare p50 against two POST /v1/verify calls on the same images.

    python -m benchmarks.compare [--quick] [--rounds N]

A real service (default pack, SQLite file, local keyring, object store directory) in this
process, called through FastAPI's TestClient, so both sides pay the same HTTP framing. The
images are real: a selfie of one of t1.jpg's faces and a card render of the same face (the
test suite's `tests.document_renders`: portrait printed small, blurred, JPEG 40, a KTP-like
card). The baseline is what a client does without compare: enroll the ID photo once, then
per onboarding two verify calls, the selfie and the document image each against it. Each
round makes one compare and the two verifies, in turns (`time_alternating`), so the machine's
drift reaches both alike. The card is upright, with no ghost image and a portrait large
enough that the selfie gate takes it too (verify needs that); a second row times compare on
the sideways card with its ghost image (the rotation path), with no baseline.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from benchmarks.common import (
    print_table,
    summarise,
    throwaway_runtime,
    time_alternating,
    write_results,
)

PERSON = 3  # t1.jpg's fourth face from the left: near-frontal


def _images(pipeline: Any) -> dict[str, bytes]:
    import insightface

    from tests.document_renders import document, face_crops, selfie

    photo = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    crop = face_crops(pipeline.detector, photo)[PERSON]
    return {
        "selfie": selfie(crop),
        "card": document(crop, portrait_px=200, rotate=None, ghost=False, card_px=(640, 404)),
        "sideways_card": document(crop, portrait_px=110),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(client: TestClient, path: str, headers: dict[str, str], body: dict[str, Any]) -> None:
    response = client.post(path, headers=headers, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds (CI smoke)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (15 if args.quick else 150)
    warmup = 3 if args.quick else 10

    from app.main import create_app
    from app.services.orgs import create_org

    with throwaway_runtime("compare") as runtime:
        images = _images(runtime.pipeline)
        _, key = create_org(runtime, "Benchmark Bank")
        headers = {"Authorization": f"Bearer {key.plaintext}"}
        with TestClient(create_app(runtime.settings, runtime)) as client:
            enrolled = client.post(
                "/v1/subjects/id-photo/enrollments",
                headers=headers,
                json={"frames": [_b64(images["card"])]},
            )
            if enrolled.status_code != 201:
                raise RuntimeError(f"enroll: {enrolled.status_code} {enrolled.text[:200]}")
            selfie, card = _b64(images["selfie"]), _b64(images["card"])
            sideways = _b64(images["sideways_card"])

            def compare() -> None:
                body = {"probe": {"image": selfie}, "reference": {"image": card}}
                _post(client, "/v1/compare", headers, body)

            def two_verifies() -> None:
                for image in (selfie, card):
                    body = {"subject_id": "id-photo", "probe": {"image": image}}
                    _post(client, "/v1/verify", headers, body)

            def compare_sideways() -> None:
                body = {"probe": {"image": selfie}, "reference": {"image": sideways}}
                _post(client, "/v1/compare", headers, body)

            timings = time_alternating(
                {
                    "compare": compare,
                    "two_verifies": two_verifies,
                    "compare_sideways": compare_sideways,
                },
                rounds,
                warmup,
            )
    results = {name: summarise(t, warmup) for name, t in timings.items()}
    base = results["two_verifies"]["p50_ms"]
    rows = [
        [
            name,
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['p50_ms'] / base:.2f}x" if name != "two_verifies" else "1.00x",
        ]
        for name, r in results.items()
    ]
    print_table(
        f"POST /v1/compare vs two POST /v1/verify, same images (interleaved, {rounds} rounds)",
        ["call", "p50 ms", "p95 ms", "vs two verifies"],
        rows,
    )
    write_results(
        "compare",
        {
            "baseline": "two POST /v1/verify calls (selfie, then the document image) against "
            "the document enrolled once",
            "rounds": rounds,
            "quick": args.quick,
            "images": {name: len(data) for name, data in images.items()},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
