"""At-least-once across a crash: `wajah serve` is killed with SIGKILL while it delivers an
event to a receiver that stalls; after a restart the event is delivered, under the same
webhook-id, verified by the receiver with `standardwebhooks`. Nothing is lost (the outbox row
committed with the enrollment); a duplicate is allowed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY
from tests.app.api.test_crash import Server, create_org, database_url, free_port
from tests.app.api.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

__all__ = ["database_url"]  # the fixture, shared with test_crash

# Longer than the kill takes to land, shorter than the attempt timeout (10 s).
STALL_S = 8.0


def test_kill_9_mid_delivery_delivers_after_restart(
    database_url: str, tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "WAJAH_HOME": str(tmp_path / "home"),
        "WAJAH_DATABASE_URL": database_url,
        "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_HOST": "127.0.0.1",
        "WAJAH_PORT": str(free_port()),
        "WAJAH_INFERENCE_WORKERS": "1",
        "WAJAH_WEBHOOKS_ALLOW_PRIVATE": "true",
        # One wave per round: the claim's lease (10 s + 20 s) ends soon after the kill.
        "WAJAH_WEBHOOKS_BATCH_SIZE": "4",
        "WAJAH_WEBHOOKS_CONCURRENCY": "4",
    }
    _, api_key = create_org(env)
    admin = {"Authorization": f"Bearer {api_key}"}
    receiver = Receiver(mode="stall", stall_s=STALL_S).start()
    server = Server(env, int(env["WAJAH_PORT"]), tmp_path / "server.log")
    try:
        server.start()
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            made = client.post(
                "/v1/webhooks",
                headers=admin,
                json={"url": receiver.url, "events": ["enrollment.created"]},
            )
            assert made.status_code == 201, made.text
            receiver.secrets.append(made.json()["secret"])
            enrolled = client.post(
                "/v1/subjects/crash-hook/enrollments",
                headers=admin,
                files=[("frames", ("tom.jpg", face_images["tom"], "image/jpeg"))],
            )
            assert enrolled.status_code == 201, enrolled.text
        (first,) = receiver.wait_for(1, timeout=60)  # the worker is inside the attempt now
        assert first.verified, first.error
        server.kill()
        receiver.mode = "ok"
        server.start()
        server.wait_ready()
        # Once the dead replica's lease has ended, the restarted one sends it again.
        got = receiver.wait_for(2, timeout=120)
        assert len(got) >= 2, server.log_tail()
        assert got[1].verified, got[1].error
        assert got[1].headers["webhook-id"] == first.headers["webhook-id"]
        assert got[1].body == first.body
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            hook_id = made.json()["id"]
            for _ in range(100):
                listed = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=admin).json()
                if listed["items"][0]["status"] == "succeeded":
                    break
                time.sleep(0.1)
            (delivery,) = listed["items"]
            assert delivery["status"] == "succeeded"
            assert delivery["event_id"] == first.headers["webhook-id"]
        server.stop()
    finally:
        if server.process is not None:
            server.kill()
        receiver.stop()
