"""The OpenAPI document is enough to integrate: `openapi-python-client` generates a client from
it without a warning, and that client alone drives enroll (multipart and JSON) → verify →
search → erase against a live server (uvicorn on a free port).

The generator pins httpx and typer below this project's own pins, and generated clients need
attrs and python-dateutil, which the service does not: generator and client run in a virtual
environment of their own, made once and cached under the system's temp directory
(`WAJAH_OPENAPI_CLIENT_VENV` names another; it needs PyPI once, as the lock's install does).
Quick enough for every run: installing them takes about 10 s once, a run about 3 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.runtime import Runtime
from tests.app.api.conftest import Org

TOOLS = ["openapi-python-client==0.29.1", "python-dateutil==2.9.0.post0"]
DRIVER = Path(__file__).with_name("generated_client_driver.py")


def client_venv() -> Path:
    """A virtual environment with the generator and what generated clients import."""
    home = Path(
        os.environ.get("WAJAH_OPENAPI_CLIENT_VENV")
        or Path(tempfile.gettempdir()) / "wajah-openapi-python-client-0.29.1"
    )
    if not (home / "bin" / "openapi-python-client").exists():
        venv.create(home, with_pip=True, clear=True)
        subprocess.run(
            [str(home / "bin" / "python"), "-m", "pip", "install", "-q", *TOOLS],
            check=True,
            capture_output=True,
        )
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(runtime: Runtime) -> Iterator[str]:
    """uvicorn on a free port in a thread, serving the session's runtime."""
    port = free_port()
    config = uvicorn.Config(
        create_app(runtime.settings, runtime), host="127.0.0.1", port=port, log_level="warning"
    )
    live = uvicorn.Server(config)
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not live.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    live.should_exit = True
    thread.join(10)


def test_generated_client_enrolls_verifies_searches_and_erases(
    server: str,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    tmp_path: Path,
) -> None:
    home = client_venv()
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{server}/openapi.json").content)
    generate = [
        str(home / "bin" / "openapi-python-client"),
        "generate",
        "--path",
        str(spec),
        "--output-path",
        str(tmp_path / "wajah_client"),
        "--meta",
        "none",
    ]
    done = subprocess.run(generate, capture_output=True, text=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # What it cannot generate it reports as a warning (and leaves out): there must be none.
    assert "warning" not in output.lower(), output

    org = new_org()
    for name in ("person1", "person2"):
        (tmp_path / f"{name}.jpg").write_bytes(face_images[name])
    drive = [str(home / "bin" / "python"), str(DRIVER), server, org.admin_key, str(tmp_path)]
    done = subprocess.run(drive, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "enrolled": ["cust-form", "cust-json"],
        "verify": "match",
        "search": ["cust-form"],
        "erased": {"subject_id": "cust-json", "embeddings_erased": 1, "pii_shredded": ["nik"]},
        "after_erasure": "erased",
        "unknown_subject": "subject_not_found",
    }
