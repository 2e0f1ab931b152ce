"""The Dockerfile and the lock files it installs from.

The image cannot be built here (no Docker daemon): `.ci/docker-smoke` builds and runs it where
one exists. These tests check what the Dockerfile relies on, and that the locks are complete,
hash-checked and consistent with pyproject.toml and with each other.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()


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
    paths = set(re.findall(r"https?://127\.0\.0\.1:8000(/[\w/]+)", DOCKERFILE))
    assert paths == {"/readyz"}
    assert paths <= set(create_app(Settings()).openapi()["paths"])


def test_production_mode_is_the_default() -> None:
    runtime_stage = DOCKERFILE.split("\nFROM ")[-1]
    assert re.search(r"^\s+WAJAH_MODE=production \\$", runtime_stage, re.M)
    # Its healthcheck speaks HTTPS when the service does.
    assert "https://127.0.0.1:8000/readyz" in DOCKERFILE


def test_settings_it_sets_are_real_settings() -> None:
    names = set(re.findall(r"\b(WAJAH_[A-Z_]+)=", DOCKERFILE))
    fields = {f"WAJAH_{name.upper()}" for name in Settings.model_fields}
    assert names <= fields, names - fields


def test_it_installs_the_locked_versions() -> None:
    # The image gets the versions the tests passed with, each download hash-checked, and
    # builds wajah without fetching anything.
    assert re.search(r"^COPY requirements-prod\.lock \./$", DOCKERFILE, re.M)
    assert re.search(
        r"^RUN /opt/wajah/bin/pip install --require-hashes -r requirements-prod\.lock$",
        DOCKERFILE,
        re.M,
    )
    assert re.search(
        r"^RUN /opt/wajah/bin/pip install --no-deps --no-build-isolation \.$", DOCKERFILE, re.M
    )
    assert "-c requirements" not in DOCKERFILE


def _lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (pinned version, hashes) of a pip-compile lock with hashes."""
    entries: dict[str, tuple[str, frozenset[str]]] = {}
    text = (ROOT / name).read_text()
    # One block per package: its pin line, its --hash lines, its "# via" comments.
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        requirement = Requirement(head)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{name}: {head} is not pinned with =="
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})\b", block))
        assert hashes, f"{name}: {requirement.name} has no --hash"
        entries[_canonical(requirement.name)] = (spec.version, hashes)
    return entries


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_locked_package_is_pinned_and_hashed() -> None:
    for name in ("requirements.lock", "requirements-prod.lock"):
        text = (ROOT / name).read_text()
        entries = _lock(name)
        assert len(entries) >= 40, name
        # Every --hash belongs to a pinned package (nothing loose slips through).
        assert text.count("--hash=sha256:") == sum(len(h) for _, h in entries.values())
        # The build backend is locked too, for the --no-build-isolation install.
        assert {"setuptools", "wheel"} <= set(entries), name
        assert "--index-url" not in text and "--find-links" not in text and "-e " not in text


def test_the_locks_cover_pyproject() -> None:
    full, prod = _lock("requirements.lock"), _lock("requirements-prod.lock")
    project = PYPROJECT["project"]
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = [Requirement(r) for rs in project["optional-dependencies"].values() for r in rs]
    for requirement, lock, where in (
        *((r, prod, "requirements-prod.lock") for r in runtime + build),
        *((r, full, "requirements.lock") for r in runtime + build + extras),
    ):
        name = _canonical(requirement.name)
        assert name in lock, f"{where} lacks {name}: run .ci/lock"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), (
            f"{where} pins {name}=={lock[name][0]}, outside {requirement}: run .ci/lock"
        )


def test_the_production_lock_is_the_full_lock_without_extras() -> None:
    full, prod = _lock("requirements.lock"), _lock("requirements-prod.lock")
    assert set(prod) < set(full)
    for name, (version, hashes) in prod.items():
        assert full[name] == (version, hashes), name
    assert not {"pytest", "mypy", "ruff", "hypothesis", "schemathesis"} & set(prod)


def test_readme_and_ci_install_the_same_way() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    start = next(b for b in blocks if b.endswith("&& wajah serve"))
    tests = next(b for b in blocks if b.endswith("&& pytest"))
    assert start == (
        "pip install --require-hashes -r requirements-prod.lock && "
        "pip install --no-deps --no-build-isolation -e . && wajah serve"
    )
    assert tests == (
        "pip install --require-hashes -r requirements.lock && "
        "pip install --no-deps --no-build-isolation -e . && pytest"
    )
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(f"^{re.escape(tests)}$", ci, re.M)


def test_the_smoke_script_is_there_and_parses() -> None:
    script = ROOT / ".ci" / "docker-smoke"
    assert script.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "docker build -t wajah . && .ci/docker-smoke wajah" in README
