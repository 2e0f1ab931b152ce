"""`wajah audit checkpoint / verify --checkpoint / public-key`, run in-process against a real
home directory (SQLite), including an attacker's edit of the database file."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from app.cli import cli
from models.packs import ModelPack

ROOT_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture()
def env(tmp_path: Path, default_pack: ModelPack) -> dict[str, str]:
    return {
        "WAJAH_HOME": str(tmp_path / "home"),
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_ROOT_KEY": ROOT_KEY,
    }


def _text(result: Result) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(result.output.split())


def _org(runner: CliRunner, env: dict[str, str], name: str) -> str:
    result = runner.invoke(cli, ["orgs", "create", name], env=env)
    assert result.exit_code == 0, result.output
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)["org_id"]


def test_checkpoint_then_verify_catches_a_deleted_chain(
    env: dict[str, str], tmp_path: Path
) -> None:
    runner = CliRunner()
    _org(runner, env, "A")
    victim = _org(runner, env, "B")
    out = tmp_path / "audit.checkpoint"

    made = runner.invoke(cli, ["audit", "checkpoint", "--out", str(out)], env=env)
    assert made.exit_code == 0, made.output
    public_key = runner.invoke(cli, ["audit", "public-key"], env=env).stdout.strip()
    assert made.stdout.strip() == (
        f"checkpoint of 2 chains (4 rows) written to {out}; public key {public_key}"
    )
    assert json.loads(out.read_text())["public_key"] == public_key

    verified = runner.invoke(cli, ["audit", "verify", "--checkpoint", str(out)], env=env)
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("audit log intact: 4 rows checked; nothing missing since")

    # The attacker: triggers dropped, org B's chain and head deleted.
    db = sqlite3.connect(Path(env["WAJAH_HOME"]) / "wajah.db")
    with db:
        for trigger in ("audit_log_no_update", "audit_log_no_delete", "audit_log_no_replace"):
            db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DELETE FROM audit_log WHERE chain = ?", (victim,))
        db.execute("DELETE FROM audit_heads WHERE chain = ?", (victim,))
    db.close()

    plain = runner.invoke(cli, ["audit", "verify"], env=env)
    assert plain.exit_code == 1
    assert f"org {victim} has no audit chain" in _text(plain)
    anchored = runner.invoke(cli, ["audit", "verify", "--checkpoint", str(out)], env=env)
    assert anchored.exit_code == 1
    assert f"audit chain {victim} is missing" in _text(anchored)
    # The log no longer verifies, so it gets no new checkpoint either.
    again = runner.invoke(cli, ["audit", "checkpoint", "--out", str(out)], env=env)
    assert again.exit_code == 1
    assert "no checkpoint written" in _text(again)


def test_verify_refuses_a_garbage_checkpoint_file(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    _org(runner, env, "A")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\xff not a checkpoint")
    result = runner.invoke(cli, ["audit", "verify", "--checkpoint", str(garbage)], env=env)
    assert result.exit_code == 1
    assert "is not a valid wajah audit checkpoint: not UTF-8 JSON" in _text(result)
    missing = runner.invoke(
        cli, ["audit", "verify", "--checkpoint", str(tmp_path / "nope")], env=env
    )
    assert missing.exit_code == 1
    assert "cannot read checkpoint" in _text(missing)
