"""The `wajah` command line, run in-process against a real home directory."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.crypto import Scope
from app.runtime import Runtime
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from app.settings import Settings
from app.storage import read_transaction
from models.packs import ModelPack

ROOT_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture()
def env(tmp_path: Path, default_pack: ModelPack) -> dict[str, str]:
    return {
        "WAJAH_HOME": str(tmp_path / "home"),
        "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
        "WAJAH_ROOT_KEY": ROOT_KEY,
    }


def test_orgs_create_prints_the_key_once_and_it_works_beside_a_running_server(
    env: dict[str, str], single_face_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = start_runtime(Settings())  # holds the index directory, as `wajah serve` would
    try:
        result = CliRunner().invoke(cli, ["orgs", "create", "Bank Contoh"])
        assert result.exit_code == 0, result.output
        lines = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        assert lines["api_key"].startswith("wjh_live_")
        assert result.stdout.count(lines["api_key"]) == 1
        # The server learns of the org's keys created by another process.
        principal = Principal(lines["org_id"], "cli-test", frozenset({Scope.ADMIN}))
        enrolled = enroll_subject(
            server, principal, "cust-1", CaptureBundle([single_face_path.read_bytes()])
        )
        assert enrolled.frames[0].accepted
    finally:
        stop_runtime(server)
    # The key is stored hashed only: it appears nowhere under WAJAH_HOME.
    secret = lines["api_key"].rsplit("_", 1)[1].encode()
    for path in Path(env["WAJAH_HOME"]).rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_audit_verify_on_an_intact_log(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["orgs", "create", "A"], env=env).exit_code == 0  # org + key rows
    result = runner.invoke(cli, ["audit", "verify"], env=env)
    assert result.exit_code == 0, result.output
    assert "audit log intact: 2 rows checked" in result.stdout


def test_models_verify_and_list(env: dict[str, str]) -> None:
    runner = CliRunner()
    verified = runner.invoke(cli, ["models", "verify"], env=env)
    assert verified.exit_code == 0
    assert "all files match the manifest" in verified.stdout
    missing = runner.invoke(cli, ["models", "verify", "--pack", "buffalo_l"], env=env)
    assert missing.exit_code == 1
    assert "no model pack manifest" in missing.output


def test_keys_rotate_rewraps_every_frame(env: dict[str, str], single_face_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["orgs", "create", "A"], env=env)
    org_id = created.stdout.split("org_id=")[1].split()[0]
    runtime = start_runtime(Settings(**{k[6:].lower(): v for k, v in env.items()}), serving=False)
    try:
        principal = Principal(org_id, "t", frozenset({Scope.ADMIN}))
        image = single_face_path.read_bytes()
        enroll_subject(runtime, principal, "c1", CaptureBundle([image, image]))
    finally:
        stop_runtime(runtime)
    rotated = runner.invoke(cli, ["keys", "rotate", "--org", org_id], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert "frames: rewrapped 2, failed 0" in rotated.stdout
    assert "subject_keys: rewrapped 1, failed 0" in rotated.stdout
    again = runner.invoke(cli, ["keys", "rotate", "--org", org_id, "--resume"], env=env)
    assert "frames: rewrapped 0, failed 0" in again.stdout
    assert "audit_details: rewrapped 0, failed 0" in again.stdout
    unknown = runner.invoke(cli, ["keys", "rotate", "--org", "org_nope"], env=env)
    assert unknown.exit_code == 1 and "no org 'org_nope'" in unknown.output


def test_keys_retire_destroy_and_rotate_references(
    env: dict[str, str], single_face_path: Path
) -> None:
    runner = CliRunner()
    org_id, runtime = _org_with_subjects(runner, env, single_face_path, "c1")
    stop_runtime(runtime)

    def keys(*args: str) -> Any:
        return runner.invoke(cli, ["keys", *args, "--org", org_id], env=env)

    assert keys("rotate").exit_code == 0
    primary = keys("destroy", "--version", "2")
    assert primary.exit_code == 1 and "primary" in primary.output
    unretired = keys("destroy", "--version", "1")
    assert unretired.exit_code == 1 and "retire it first" in unretired.output
    unknown = keys("retire", "--version", "9")
    assert unknown.exit_code == 1 and "no org KEK version 9" in unknown.output
    retired = keys("retire", "--version", "1")
    assert retired.exit_code == 0 and "org KEK version 1 retired" in retired.stdout
    assert keys("destroy", "--version", "1").exit_code == 0
    listed = keys("list")
    assert listed.exit_code == 0 and "destroyed" in listed.stdout and "primary" in listed.stdout

    rehashed = keys("rotate-references")
    assert rehashed.exit_code == 0, rehashed.output
    assert "enrollments: rehashed 1, tampered 0" in rehashed.stdout
    assert "wajah keys destroy --org" in rehashed.output
    gone = keys("destroy", "--references", "--version", "1")
    assert gone.exit_code == 0 and "reference key version 1 destroyed" in gone.stdout
    both = keys("destroy", "--references", "--subject-keys", "--version", "1")
    assert both.exit_code == 1 and "pick one" in both.output


def _org_with_subjects(
    runner: CliRunner, env: dict[str, str], face: Path, *subject_ids: str
) -> tuple[str, Runtime]:
    """An org made by `wajah orgs create`, a runtime on its home, one enrollment per subject."""
    created = runner.invoke(cli, ["orgs", "create", "A"], env=env)
    org_id = created.stdout.split("org_id=")[1].split()[0]
    runtime = start_runtime(Settings(**{k[6:].lower(): v for k, v in env.items()}), serving=False)
    principal = Principal(org_id, "t", frozenset({Scope.ADMIN}))
    for subject_id in subject_ids:
        enroll_subject(runtime, principal, subject_id, CaptureBundle([face.read_bytes()]))
    return org_id, runtime


def test_retention_purges_expired_frames_only(env: dict[str, str], single_face_path: Path) -> None:
    from datetime import timedelta

    import sqlalchemy as sa

    from app.services.retention import purge_expired_frames
    from app.storage.schema import frames, utcnow

    runner = CliRunner()
    org_id, runtime = _org_with_subjects(runner, env, single_face_path, "old", "new")
    try:
        with runtime.engine.begin() as conn:
            keys = conn.execute(sa.select(frames.c.id, frames.c.object_key)).all()
            conn.execute(
                sa.update(frames)
                .where(frames.c.id == keys[0].id)
                .values(purge_after=utcnow() - timedelta(days=1))
            )
        assert purge_expired_frames(runtime) == {org_id: 1}
        assert purge_expired_frames(runtime) == {}
        with read_transaction(runtime.engine) as conn:
            rows = {r.id: r for r in conn.execute(sa.select(frames)).all()}
        assert rows[keys[0].id].wrapped_dek is None and rows[keys[0].id].purged_at is not None
        assert rows[keys[1].id].wrapped_dek is not None
        assert not runtime.objects.exists(keys[0].object_key)
        assert runtime.objects.exists(keys[1].object_key)
    finally:
        stop_runtime(runtime)
    result = runner.invoke(cli, ["retention", "run"], env=env)
    assert result.exit_code == 0 and "frames: purged 0 in 0 orgs" in result.stdout


def test_retention_sweeps_sealed_frames_no_row_references(
    env: dict[str, str], single_face_path: Path
) -> None:
    """A kill between sealing a frame and committing its enrollment (or between shredding a
    frame and deleting its object) leaves an unreferenced object; the sweep deletes it once
    it is older than any enrollment could take to commit, and nothing else."""
    import os
    from datetime import timedelta

    import sqlalchemy as sa

    from app.crypto import Purpose
    from app.services.retention import (
        ORPHAN_GRACE,
        purge_expired_frames,
        sweep_orphaned_frames,
    )
    from app.storage.ids import new_id
    from app.storage.schema import audit_log, frames, utcnow

    runner = CliRunner()
    org_id, runtime = _org_with_subjects(runner, env, single_face_path, "kept", "shredded")
    stale = (utcnow() - ORPHAN_GRACE - timedelta(minutes=5)).timestamp()

    def put_frame(key: str) -> None:
        sealed = runtime.cipher.seal_detached(
            b"frame", org_id=org_id, object_id=key, purpose=Purpose.FRAME
        )
        runtime.objects.put(key, sealed.payload)

    try:
        with runtime.engine.begin() as conn:
            kept, shredded = conn.execute(
                sa.select(frames.c.id, frames.c.object_key).order_by(frames.c.created_at)
            ).all()
            conn.execute(
                sa.update(frames)
                .where(frames.c.id == shredded.id)
                .values(purge_after=utcnow() - timedelta(days=1))
            )
        assert purge_expired_frames(runtime) == {org_id: 1}
        put_frame(shredded.object_key)  # the delete after the shred never happened
        crashed, young = new_id("frm"), new_id("frm")
        put_frame(crashed)  # sealed, then killed before the enrollment committed
        put_frame(young)  # an enrollment that may still be committing
        runtime.objects.put("not_a_frame", b"x")
        for key in (kept.object_key, shredded.object_key, crashed, "not_a_frame"):
            os.utime(runtime.objects.path_for(key), (stale, stale))

        assert sweep_orphaned_frames(runtime) == 2
        assert not runtime.objects.exists(crashed)
        assert not runtime.objects.exists(shredded.object_key)
        for key in (kept.object_key, young, "not_a_frame"):
            assert runtime.objects.exists(key)
        assert sweep_orphaned_frames(runtime) == 0
        with read_transaction(runtime.engine) as conn:
            actions = (
                conn.execute(sa.select(audit_log.c.action).where(audit_log.c.org_id.is_(None)))
                .scalars()
                .all()
            )
        assert actions.count("retention.sweep_orphaned_frames") == 1
        os.utime(runtime.objects.path_for(young), (stale, stale))
    finally:
        stop_runtime(runtime)
    result = runner.invoke(cli, ["retention", "run"], env=env)
    assert result.exit_code == 0, result.output
    assert "deleted 1 orphaned sealed frames" in result.stdout
    assert runner.invoke(cli, ["audit", "verify"], env=env).exit_code == 0


def test_keys_issue_gives_a_locked_out_org_a_working_key(env: dict[str, str]) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["orgs", "create", "A"], env=env)
    org_id = dict(line.split("=", 1) for line in created.stdout.splitlines() if "=" in line)[
        "org_id"
    ]

    issued = runner.invoke(
        cli,
        ["keys", "issue", "--org", org_id, "--scopes", "admin,match", "--expires", "2099-01-01"],
        env=env,
    )

    assert issued.exit_code == 0, issued.output
    plaintext = issued.stdout.split("api_key=", 1)[1].split()[0]
    assert issued.stdout.count(plaintext) == 1
    runtime = start_runtime(Settings(**{k[6:].lower(): v for k, v in env.items()}), serving=False)
    try:
        from app.services.orgs import list_api_keys
        from app.services.principal import authenticate

        principal = authenticate(runtime, plaintext, Scope.ADMIN)
        assert principal.org_id == org_id and principal.can(Scope.MATCH)
        listed = {k["key_id"]: k for k in list_api_keys(runtime, principal)}
        assert listed[principal.key_id]["expires_at"].year == 2099
    finally:
        stop_runtime(runtime)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--org", "org_nope", "--scopes", "admin"], "no org 'org_nope'"),
        (["--org", "org_x\x01", "--scopes", "admin"], "no org"),
        (["--org", "ORG", "--scopes", "root"], "unknown scope in 'root'"),
        (["--org", "ORG", "--scopes", ","], "name at least one scope"),
        (["--org", "ORG", "--scopes", "admin", "--name", "a\x00b"], "control characters"),
        (["--org", "ORG", "--scopes", "admin", "--name", ""], "1..200 characters"),
        (["--org", "ORG", "--scopes", "admin", "--expires", "2001-01-01"], "in the future"),
        (["--org", "ORG", "--scopes", "admin", "--expires", "soon"], "Invalid value"),
        (["--scopes", "admin"], "Missing option '--org'"),
    ],
)
def test_keys_issue_refuses_bad_input_and_issues_nothing(
    env: dict[str, str], args: list[str], message: str
) -> None:
    runner = CliRunner()
    created = runner.invoke(cli, ["orgs", "create", "A"], env=env)
    org_id = dict(line.split("=", 1) for line in created.stdout.splitlines() if "=" in line)[
        "org_id"
    ]
    runtime = start_runtime(Settings(**{k[6:].lower(): v for k, v in env.items()}), serving=False)
    try:
        from app.storage import orgs as org_store

        def key_count() -> int:
            with read_transaction(runtime.engine) as conn:
                return len(org_store.org_api_keys(conn, org_id))

        before = key_count()
        result = runner.invoke(
            cli, ["keys", "issue", *[org_id if a == "ORG" else a for a in args]], env=env
        )
        assert result.exit_code != 0
        assert message in result.output
        assert "api_key=" not in result.output
        assert key_count() == before
    finally:
        stop_runtime(runtime)


def test_orgs_close_revokes_every_key_and_prints_the_receipt(env: dict[str, str]) -> None:
    import json

    runner = CliRunner()
    created = runner.invoke(cli, ["orgs", "create", "Bank Tutup"], env=env)
    assert created.exit_code == 0, created.output
    lines = dict(line.split("=", 1) for line in created.stdout.splitlines() if "=" in line)

    closed = runner.invoke(cli, ["orgs", "close", lines["org_id"], "--grace-days", "30"], env=env)

    assert closed.exit_code == 0, closed.output
    receipt = json.loads(closed.stdout)
    assert receipt["org_id"] == lines["org_id"] and receipt["grace_days"] == 30
    assert len(receipt["api_keys_revoked"]) == 1 and len(receipt["receipt_sha256"]) == 64
    again = runner.invoke(cli, ["orgs", "close", lines["org_id"]], env=env)
    assert again.exit_code != 0 and "was closed at" in again.output
    unknown = runner.invoke(cli, ["orgs", "close", "org_nothing"], env=env)
    assert unknown.exit_code != 0 and "no org" in unknown.output
    issued = runner.invoke(
        cli, ["keys", "issue", "--org", lines["org_id"], "--scopes", "admin"], env=env
    )
    assert issued.exit_code != 0 and "is closed" in issued.output


def test_orgs_create_outside_id_needs_a_residency_that_allows_the_region(
    env: dict[str, str],
) -> None:
    runner = CliRunner()
    sg = {**env, "WAJAH_REGION": "SG"}
    refused = runner.invoke(cli, ["orgs", "create", "Bank SG"], env=sg)
    assert refused.exit_code != 0 and "forbids this deployment's region SG" in refused.output
    made = runner.invoke(cli, ["orgs", "create", "Bank SG", "--data-residency", "any"], env=sg)
    assert made.exit_code == 0, made.output
    bad_region = runner.invoke(
        cli,
        ["orgs", "create", "Bank", "--data-residency", "any"],
        env={**env, "WAJAH_REGION": "Singapore"},
    )
    assert bad_region.exit_code != 0
