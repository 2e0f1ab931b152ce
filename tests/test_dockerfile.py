"""The Dockerfile cannot be built here (no Docker engine); check what it relies on exists."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.settings import Settings

DOCKERFILE = (Path(__file__).parent.parent / "Dockerfile").read_text()


def test_multi_stage_non_root_with_healthcheck() -> None:
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.M)) == 2
    assert re.search(r"^USER wajah$", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE


def test_the_commands_it_runs_exist() -> None:
    runner = CliRunner()
    for command in (["models", "prepare", "--help"], ["serve", "--help"]):
        assert runner.invoke(cli, command).exit_code == 0, command
    assert 'CMD ["wajah", "serve"]' in DOCKERFILE
    assert "wajah models prepare" in DOCKERFILE


def test_healthcheck_path_is_served() -> None:
    path = re.search(r"http://127\.0\.0\.1:8000(/\S+)", DOCKERFILE)
    assert path is not None
    assert path.group(1) in create_app(Settings()).openapi()["paths"]


def test_settings_it_sets_are_real_settings() -> None:
    names = set(re.findall(r"\b(WAJAH_[A-Z_]+)=", DOCKERFILE))
    fields = {f"WAJAH_{name.upper()}" for name in Settings.model_fields}
    assert names <= fields, names - fields


def test_it_installs_the_locked_versions() -> None:
    # The image gets the versions the tests passed with, as the README's commands do.
    root = Path(__file__).parent.parent
    assert (root / "requirements.lock").is_file()
    assert re.search(r"^COPY [^\n]*\brequirements\.lock\b", DOCKERFILE, re.M)
    assert re.search(r"^RUN /opt/wajah/bin/pip install -c requirements\.lock \.$", DOCKERFILE, re.M)
