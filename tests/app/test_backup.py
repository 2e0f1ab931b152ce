"""`wajah backup` and `wajah restore` against real SQLite files and a real PostgreSQL schema.

The drill: enroll, back up (with the server running), enroll more, erase one subject, stop,
restore, start again. Every enrollment acknowledged before the backup verifies and its frames
open; what came after is gone, except the later erasure: the restore kept the erasure log
and erased the subject again. Then garbage in: each refusal changes nothing.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from app.cli import cli
from app.crypto import Scope
from app.errors import SubjectNotFoundError
from app.runtime import Runtime
from app.services.lifecycle import start_runtime, stop_runtime
from app.services.matching import search_probe, verify_probe
from app.services.orgs import create_org
from app.services.principal import Principal, authenticate
from app.services.probes import Probe
from app.services.sealing import open_frame, subject_key_in
from app.services.subjects import (
    CaptureBundle,
    EnrollmentResult,
    enroll_subject,
    erase_subject,
    get_subject,
)
from app.settings import Settings
from app.storage.schema import frames
from models.packs import ModelPack
from tests.app.api.conftest import TEST_ROOT_KEY, face_images
from tests.app.services.helpers import audit_trail, recapture
from tests.conftest import BACKENDS

__all__ = ["face_images"]

BEFORE = ("person0", "person1", "person2")  # enrolled before the backup
LATER = "person3"  # enrolled after it
ERASED = "person1"  # erased after it


@pytest.fixture()
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, or a fresh schema of the session's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'wajah.db'}"
        return
    base = request.getfixturevalue("postgres_database")
    schema = f"backup_{secrets.token_hex(6)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    yield base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    admin.dispose()


@dataclass
class Service:
    """A home and a database, as the CLI (environment) and the runtime (settings) see them."""

    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings(
            **{
                name[len("WAJAH_") :].lower(): value
                for name, value in self.env.items()
                if name.startswith("WAJAH_")
            }
        )

    def cli(self, *args: str) -> tuple[int, str]:
        """Run `wajah *args`; its exit status and output, wrapped lines joined."""
        result = CliRunner().invoke(cli, list(args), env=self.env)
        return result.exit_code, " ".join(result.output.split())

    def counts(self) -> dict[str, int]:
        engine = sa.create_engine(self.env["WAJAH_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return {
                    table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                    for table in ("orgs", "subjects", "enrollments", "frames", "audit_log")
                }
        finally:
            engine.dispose()


@pytest.fixture()
def service(database_url: str, tmp_path: Path, default_pack: ModelPack) -> Service:
    return Service(
        {
            "WAJAH_HOME": str(tmp_path / "home"),
            "WAJAH_DATABASE_URL": database_url,
            "WAJAH_MODEL_CACHE_DIR": str(default_pack.directory.parent),
            "WAJAH_ROOT_KEY": TEST_ROOT_KEY,
        }
    )


def enroll(runtime: Runtime, principal: Principal, name: str, image: bytes) -> EnrollmentResult:
    result = enroll_subject(runtime, principal, name, CaptureBundle([image]))
    assert [f.accepted for f in result.frames] == [True]
    return result


def open_frames(runtime: Runtime, org_id: str, result: EnrollmentResult) -> list[bytes]:
    """The enrollment's frames, opened as the service would to re-embed them."""
    embedding_ids = [f.embedding_id for f in result.frames]
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(frames.c.id, frames.c.object_key, frames.c.wrapped_dek).where(
                frames.c.enrollment_id.in_(embedding_ids)
            )
        ).all()
        key = subject_key_in(conn, runtime, org_id, result.subject_id)
    return [
        open_frame(
            runtime,
            org_id,
            key,
            row.id,
            bytes(row.wrapped_dek),
            bytes(runtime.objects.get(row.object_key)),
        )
        for row in rows
        if row.wrapped_dek is not None  # shredded: nothing left to open
    ]


@pytest.mark.slow
@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_drill(service: Service, tmp_path: Path, face_images: dict[str, bytes]) -> None:
    backup_dir = tmp_path / "backup"
    runtime = start_runtime(service.settings)
    try:
        org_id, key = create_org(runtime, "Bank Contoh")
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        before = {name: enroll(runtime, principal, name, face_images[name]) for name in BEFORE}
        # Online: the server keeps running while the backup is taken.
        code, output = service.cli("backup", "--out", str(backup_dir))
        assert code == 0, output
        enroll(runtime, principal, LATER, face_images[LATER])
        erased = erase_subject(runtime, principal, ERASED)
    finally:
        stop_runtime(runtime)
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["row_counts"]["enrollments"] == len(BEFORE)
    assert manifest["root_key"] == "not included: back it up separately"
    # Owner-only, like the home it was taken from.
    assert {p.stat().st_mode & 0o077 for p in backup_dir.rglob("*")} == {0}
    assert TEST_ROOT_KEY.encode() not in b"".join(
        p.read_bytes() for p in backup_dir.rglob("*") if p.is_file()
    )

    code, output = service.cli("restore", "--from", str(backup_dir), "--yes")
    assert code == 0, output
    assert "undone" in output and "erased again 1 subjects" in output

    runtime = start_runtime(service.settings)
    try:
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        for name, enrolled in before.items():
            probe = Probe(image=recapture(face_images[name]))
            if name == ERASED:
                # Kept erased: the backup held it, the erasure log put it back out.
                with pytest.raises(SubjectNotFoundError):
                    verify_probe(runtime, principal, name, probe)
                assert get_subject(runtime, principal, name)["status"] == "erased"
                assert open_frames(runtime, org_id, enrolled) == []
                continue
            assert verify_probe(runtime, principal, name, probe)["decision"] == "match", name
            assert open_frames(runtime, org_id, enrolled) == [face_images[name]]
        with pytest.raises(SubjectNotFoundError):
            verify_probe(runtime, principal, LATER, Probe(image=face_images[LATER]))
        # The index was rebuilt from the restored rows, not from a snapshot of later ones.
        found = search_probe(runtime, principal, Probe(image=recapture(face_images[ERASED])))
        assert found["candidates"] == [] and found["gallery_size"] == len(BEFORE) - 1
        later = search_probe(runtime, principal, Probe(image=recapture(face_images[LATER])))
        assert later["candidates"] == []
        # The backup's audit log has no row of the erasure made after it; the re-application
        # writes one, naming the original erasure.
        [again] = [e for e in audit_trail(runtime, principal) if e.action.startswith("subject.")]
        assert (again.action, again.target) == ("subject.erase.reapplied", ERASED)
        assert again.details["original_receipt_sha256"] == erased["receipt_sha256"]
    finally:
        stop_runtime(runtime)
    code, output = service.cli("audit", "verify")
    assert code == 0 and "audit log intact" in output, output


# --- garbage in: a clear error, exit status 1, the database unchanged -------------------------


@pytest.fixture()
def backed_up(service: Service, tmp_path: Path, face_images: dict[str, bytes]) -> Path:
    """A backup of one enrollment; then one more enrollment, which a restore would undo."""
    runtime = start_runtime(service.settings, serving=False)
    try:
        _, key = create_org(runtime, "Bank Contoh")
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        enroll(runtime, principal, "before", face_images["person0"])
        backup_dir = tmp_path / "backup"
        code, output = service.cli("backup", "--out", str(backup_dir))
        assert code == 0, output
        enroll(runtime, principal, "after", face_images["person2"])
    finally:
        stop_runtime(runtime)
    return backup_dir


def refused(service: Service, source: Path, *extra: str) -> str:
    counts = service.counts()
    code, output = service.cli("restore", "--from", str(source), *extra)
    assert code == 1, output
    assert "Traceback" not in output
    assert service.counts() == counts
    assert counts["enrollments"] == 2
    return output


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_a_missing_path(service: Service, backed_up: Path) -> None:
    assert "does not exist" in refused(service, backed_up.parent / "nope", "--yes")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_a_tampered_dump(service: Service, backed_up: Path) -> None:
    manifest = json.loads((backed_up / "manifest.json").read_text())
    dump = backed_up / manifest["dump"]["file"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    assert "does not match the SHA-256" in refused(service, backed_up, "--yes")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_another_format(service: Service, backed_up: Path) -> None:
    path = backed_up / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format": "wajah-backup/2"}))
    assert "'wajah-backup/2'" in refused(service, backed_up, "--yes")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_a_database_with_data_without_yes(
    service: Service, backed_up: Path
) -> None:
    message = refused(service, backed_up)
    assert "is not empty" in message and "--yes" in message
    # With --yes the same backup goes back: the later enrollment is undone.
    code, output = service.cli("restore", "--from", str(backed_up), "--yes")
    assert code == 0, output
    assert service.counts()["enrollments"] == 1


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_while_a_server_runs_on_the_home(service: Service, backed_up: Path) -> None:
    server = start_runtime(service.settings)
    try:
        assert "a server is running" in refused(service, backed_up, "--yes")
    finally:
        stop_runtime(server)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_restore_refuses_while_a_server_of_another_home_serves_the_sqlite_file(
    service: Service, backed_up: Path, tmp_path: Path
) -> None:
    other_home = tmp_path / "other-home"
    shutil.copytree(service.settings.home / "keys", other_home / "keys")  # SQLite: keys are files
    server = start_runtime(service.settings.model_copy(update={"home": other_home}))
    try:
        assert "a server is serving" in refused(service, backed_up, "--yes")
    finally:
        stop_runtime(server)


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_backup_refuses_a_used_or_missing_directory(
    service: Service, backed_up: Path, tmp_path: Path
) -> None:
    code, output = service.cli("backup", "--out", str(backed_up))
    assert code == 1 and "not empty" in output
    code, output = service.cli("backup", "--out", str(tmp_path / "no" / "such" / "dir"))
    assert code == 1 and "is not a directory" in output
    assert not (tmp_path / "no").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_backup_without_pg_dump_says_so(service: Service, backed_up: Path, tmp_path: Path) -> None:
    service.env["PATH"] = str(tmp_path / "empty-bin")
    code, output = service.cli("backup", "--out", str(tmp_path / "second"))
    assert code == 1 and "pg_dump not found" in output
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_checks_row_counts_inside_its_transaction(
    service: Service, backed_up: Path
) -> None:
    """A dump that does not hold what its manifest says is refused, on PostgreSQL after the
    schema was dropped and the dump replayed: the transaction is rolled back."""
    path = backed_up / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["row_counts"]["enrollments"] += 1
    path.write_text(json.dumps(manifest))
    assert "the manifest says" in refused(service, backed_up, "--yes")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_restore_refuses_a_revision_it_does_not_know(service: Service, backed_up: Path) -> None:
    path = backed_up / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "alembic_revision": "9999"}))
    assert "revision '9999'" in refused(service, backed_up, "--yes")


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_an_older_backup_is_migrated_to_head(service: Service, tmp_path: Path) -> None:
    """A backup at revision 0003 restored over a database at head (whose newer tables the
    dump knows nothing of) comes back at 0003 and is migrated up."""
    from app.backup import backup
    from app.storage import create_engine_for, current_revision, upgrade_database
    from app.storage.migrate import head_revision

    engine = create_engine_for(service.env["WAJAH_DATABASE_URL"])
    try:
        Path(service.env["WAJAH_HOME"]).mkdir()
        upgrade_database(engine, "0003")
        manifest = backup(service.settings, tmp_path / "old")
        assert manifest["alembic_revision"] == "0003"
        upgrade_database(engine)
        code, output = service.cli("restore", "--from", str(tmp_path / "old"))
        assert code == 0, output
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert "sealed_objects" in sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()


# --- erasures survive a restore ---------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_lost_database_restored_from_an_older_backup_takes_a_newer_backups_erasures(
    service: Service, tmp_path: Path, face_images: dict[str, bytes]
) -> None:
    runtime = start_runtime(service.settings, serving=False)
    try:
        _, key = create_org(runtime, "Bank Contoh")
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        enroll(runtime, principal, "gone", face_images["person0"])
        enroll(runtime, principal, "kept", face_images["person2"])
        assert service.cli("backup", "--out", str(tmp_path / "older"))[0] == 0
        erase_subject(runtime, principal, "gone")
        assert service.cli("backup", "--out", str(tmp_path / "newer"))[0] == 0
    finally:
        stop_runtime(runtime)
    newer = tmp_path / "newer" / "erasures.jsonl"
    assert [json.loads(line)["subject_id"] for line in newer.read_text().splitlines()] == ["gone"]
    Path(service.settings.resolved_database_url.removeprefix("sqlite:///")).unlink()

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"org_id": "o", "subject_id": "s"}\n')
    code, output = service.cli(
        "restore", "--from", str(tmp_path / "older"), "--erasures", str(garbage)
    )
    assert code == 1 and "line 1 is not an erasure-log entry" in output, output

    code, output = service.cli(
        "restore", "--from", str(tmp_path / "older"), "--erasures", str(newer)
    )
    assert code == 0 and "erased again 1 subjects" in output, output
    runtime = start_runtime(service.settings, serving=False)
    try:
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        assert get_subject(runtime, principal, "gone")["status"] == "erased"
        assert get_subject(runtime, principal, "kept")["status"] == "active"
    finally:
        stop_runtime(runtime)
    assert not (service.settings.home / "restore-carry.json").exists()


@pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
def test_a_restore_never_reopens_a_closed_org(
    service: Service, tmp_path: Path, face_images: dict[str, bytes]
) -> None:
    """Backup, then the org is closed and purged; the restore of the older backup brings its
    rows back, but the closure stays: its keys are refused, its subjects erased again, and the
    next retention round purges what came back."""
    from datetime import timedelta

    from app.errors import UnauthorizedError
    from app.services import closure
    from app.storage import read_transaction, utcnow
    from app.storage import subjects as subject_store

    backup_dir = tmp_path / "backup"
    closed_at = utcnow() - timedelta(days=2)
    runtime = start_runtime(service.settings, serving=False)
    try:
        org_id, key = create_org(runtime, "Closing Bank")
        principal = authenticate(runtime, key.plaintext, Scope.ADMIN)
        enroll(runtime, principal, "person0", face_images["person0"])
        code, output = service.cli("backup", "--out", str(backup_dir))
        assert code == 0, output
        closure.close_org(runtime, org_id, grace_days=1, now=closed_at)
        assert closure.purge_closed_orgs(runtime) == {org_id: 1}
    finally:
        stop_runtime(runtime)

    code, output = service.cli("restore", "--from", str(backup_dir), "--yes")
    assert code == 0, output
    assert "erased again 1 subjects" in output

    runtime = start_runtime(service.settings, serving=False)
    try:
        with pytest.raises(UnauthorizedError):
            authenticate(runtime, key.plaintext, Scope.ADMIN)
        recorded = closure.closure(runtime, org_id)
        assert recorded is not None and recorded["closed_at"] == closed_at
        assert recorded["purged_at"] is None  # to be purged again
        with read_transaction(runtime.engine) as conn:
            assert subject_store.find_subject(conn, org_id, "person0").status == "erased"
        assert closure.purge_closed_orgs(runtime) == {org_id: 0}
        assert closure.closure(runtime, org_id)["purged_at"] is not None  # type: ignore[index]
    finally:
        stop_runtime(runtime)
