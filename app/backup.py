"""`wajah backup` and `wajah restore`: a consistent copy of everything durable, and its return.

An operator tool beside `app.cli`, not a domain service: it drives `pg_dump`, `pg_restore` and
`psql`, and SQLite's online backup API, directly. A backup is a directory::

    manifest.json        written last: a directory without one is an unfinished backup
    database.dump        PostgreSQL: `pg_dump --format=custom` of the service's schema
    database.sqlite      SQLite: a copy made with SQLite's online backup API
    keys/keyring.json    the key manager's state file, where there is one (org KEKs wrapped
                         under the root key, or handles of HSM keys)
    objects/...          the sealed-frame directory, where there is one
    erasures.jsonl       the erasure log as it was when the backup finished (JSON lines:
                         org_id, subject_id, erased_at, receipt_sha256; no PII): give it to
                         `wajah restore --erasures` to restore an older backup after the
                         database itself was lost

The keyring file and the frame directory are copied whenever they exist, whatever the
database: with SQLite they hold that state; with PostgreSQL it lives in tables of its own
(`keyring_state`, `sealed_objects`, so in the dump), and only a home from before migration
0004 still has them. The root key (`WAJAH_ROOT_KEY` / `WAJAH_ROOT_KEY_FILE`) and HSM
keys are never copied: a backup without them opens nothing sealed, which is the point of
keeping them apart.

Manifest (JSON, format ``wajah-backup/1``)::

    format            "wajah-backup/1"; restore refuses any other
    wajah_version     the version that wrote the backup
    created_at        ISO 8601 UTC, when the database snapshot was taken
    database_kind     "postgresql" or "sqlite"
    schema            PostgreSQL: the schema dumped (and the only one restore writes)
    alembic_revision  the schema revision in the backup (restore migrates it to head)
    row_counts        {"enrollments": n, "subjects": n, "audit_log": n}, from the same snapshot
    dump              {"file": name, "bytes": n, "sha256": hex} of the database file
    files             {"keys/keyring.json": {"bytes", "sha256"}} when the keyring was copied
    objects           {"dir": "objects", "count": n, "bytes": n} when frames were copied
    root_key          "not included: back it up separately"

What a restore keeps from the database it replaces (read before anything is dropped, kept
in `WAJAH_HOME/restore-carry.json` until the restore is done, so a crash midway loses none
of it): the erasure log, put back and re-applied (`app.services.rights.reapply_erasures`:
a subject erased after the backup stays erased); and, when the backup was made under the
same keyring (same ``keyring_id``), the keyring state and the subject keys, which are newer
than the backup's: KEK versions destroyed and keys of subjects erased since then stay gone,
and a keyring rewrapped under a new root key (`wajah keys rotate-root`) keeps opening the
restored data. A backup of another keyring (a new deployment) brings its own.

A backup is safe while servers run: PostgreSQL is dumped from one exported snapshot (the row
counts are read in it), SQLite copied in one step of its backup API, and the files after the
database, so every frame the database copy references was already written (frames are sealed
and stored before their rows commit). A restore is not: no server may use the database while
it runs (it refuses when one holds this home's index directory, and waits at most
`LOCK_TIMEOUT` for PostgreSQL locks).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, make_url

import crashsafe
from app.settings import Settings
from app.storage import (
    DatabaseInUseError,
    claim_database,
    create_engine_for,
    current_revision,
    rights,
    upgrade_database,
    utcnow,
    write_transaction,
)
from app.storage.migrate import alembic_config
from app.storage.rights import Erasure
from index.registry import SNAPSHOT_SUFFIX

FORMAT = "wajah-backup/1"
MANIFEST = "manifest.json"
PG_DUMP_FILE = "database.dump"
SQLITE_FILE = "database.sqlite"
KEYRING_FILE = "keys/keyring.json"  # relative to WAJAH_HOME and to the backup
ERASURES_FILE = "erasures.jsonl"
CARRY_FILE = "restore-carry.json"  # in WAJAH_HOME while a restore runs
CARRY_FORMAT = "wajah-restore-carry/1"
OBJECTS_DIR = "objects"
ROOT_KEY_NOTE = "not included: back it up separately"
COUNTED_TABLES = ("enrollments", "subjects", "audit_log")
# A database holding rows in any of these is not overwritten without `--yes`.
DATA_TABLES = ("orgs", "subjects", "enrollments", "audit_log")
LOCK_TIMEOUT = "10s"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20

Step = Callable[[str], AbstractContextManager[object]]


class BackupError(Exception):
    """A backup or restore refused or failed; the message says why and what to do."""


def _quiet(_label: str) -> AbstractContextManager[object]:
    return nullcontext()


# --- backup -------------------------------------------------------------------------------------


def backup(settings: Settings, out: Path, step: Step = _quiet) -> dict[str, Any]:
    """Write a backup of the configured service into the new directory `out`; its manifest.

    On a failure, what it wrote is removed again (a directory it did not make stays, empty).
    """
    url = make_url(settings.resolved_database_url)
    postgres = url.get_backend_name() == "postgresql"
    tool = _tool("pg_dump") if postgres else None
    made = _prepare_out(out)
    try:
        if tool is not None:
            database = _dump_postgres(tool, url, out, step)
        else:
            database = _copy_sqlite(url, out, step)
        manifest = {
            "format": FORMAT,
            "wajah_version": metadata.version("wajah"),
            **database,
            **_copy_files(settings, out, step),
            "erasures": _write_erasures(url, out / ERASURES_FILE),
            "root_key": ROOT_KEY_NOTE,
        }
        crashsafe.write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode(), mode=0o600)
    except BaseException:
        _remove_partial(out, made)
        raise
    return manifest


def _copy_files(settings: Settings, out: Path, step: Step) -> dict[str, Any]:
    """Copy the key manager's state file and the sealed-frame directory, where they exist;
    after the database, so that every frame its copy references is already written."""
    files: dict[str, Any] = {}
    keyring = settings.home / KEYRING_FILE
    if keyring.is_file():
        with step("copying the keyring state"):
            files[KEYRING_FILE] = _copy_file(keyring, out / KEYRING_FILE)
    objects = None
    store = settings.resolved_object_store_dir
    if store.is_dir():
        with step("copying sealed frames"):
            count, size = _copy_tree(store, out / OBJECTS_DIR)
        objects = {"dir": OBJECTS_DIR, "count": count, "bytes": size}
    return {"files": files, "objects": objects}


def _remove_partial(out: Path, made: bool) -> None:
    if made:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _prepare_out(out: Path) -> bool:
    """Check that `out` is a new or empty directory we can write; whether we made it."""
    if not out.parent.is_dir():
        raise BackupError(f"cannot write a backup to {out}: {out.parent} is not a directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} already exists and is not empty: name a new directory")
    made = not out.exists()
    try:
        out.mkdir(mode=0o700, exist_ok=True)
        probe = out / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise BackupError(f"cannot write a backup to {out}: {exc.strerror}") from None
    return made


def _dump_postgres(tool: str, url: URL, out: Path, step: Step) -> dict[str, Any]:
    """`pg_dump` of the service's schema from a snapshot exported by a transaction that
    reads the row counts and the revision in the same snapshot."""
    uri, env = _libpq(url)
    target = out / PG_DUMP_FILE
    target.touch(mode=0o600)  # pg_dump keeps the mode of a file it overwrites
    engine = create_engine_for(url)
    try:
        with engine.connect() as plain:
            conn = plain.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                created_at = _now()
                schema = _schema(conn)
                facts = {"alembic_revision": current_revision(conn), "row_counts": _counts(conn)}
                # zlib level 1, not pg_dump's default 6: vectors and sealed frames are random
                # bytes, compressible only out of the hex text COPY writes bytea in. Measured
                # at 100k enrollments: a quarter of the time, 5 % more bytes.
                command = [tool, "--format=custom", "--compress=1", f"--schema={schema}"]
                command += [f"--snapshot={snapshot}", "--no-password", f"--file={target}"]
                with step(f"dumping schema {schema} with pg_dump"):
                    _run([*command, f"--dbname={uri}"], env, "pg_dump")
    except sa.exc.OperationalError as exc:
        raise BackupError(f"cannot reach the database: {exc.orig}") from None
    finally:
        engine.dispose()
    _fsync(target)
    return {
        "created_at": created_at,
        "database_kind": "postgresql",
        "schema": schema,
        **facts,
        "dump": _describe(target, step),
    }


def _copy_sqlite(url: URL, out: Path, step: Step) -> dict[str, Any]:
    source = Path(url.database or "")
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    target = out / SQLITE_FILE
    target.touch(mode=0o600)  # the database holds what the backup is for: owner only
    with (
        step("copying the SQLite database"),
        closing(sqlite3.connect(source)) as src,
        closing(sqlite3.connect(target)) as dst,
    ):
        src.execute("PRAGMA busy_timeout = 10000")
        created_at = _now()
        # All pages in one step: one consistent snapshot, taken under a read lock that in
        # WAL mode never blocks the server's writers.
        src.backup(dst)
        # One self-contained file: no -wal or -shm beside it.
        dst.execute("PRAGMA journal_mode = DELETE")
        facts = {"alembic_revision": _sqlite_revision(dst), "row_counts": _sqlite_counts(dst)}
    _fsync(target)
    return {
        "created_at": created_at,
        "database_kind": "sqlite",
        **facts,
        "dump": _describe(target, step),
    }


# --- restore ------------------------------------------------------------------------------------


def restore(
    settings: Settings,
    source: Path,
    *,
    overwrite: bool = False,
    step: Step = _quiet,
    erasures: Path | None = None,
) -> dict[str, Any]:
    """Restore the backup in `source` over the configured service; migrate it to head.

    Refuses, changing nothing, a backup of another format, kind or schema, a dump whose
    SHA-256 differs from the manifest's, a schema revision this version does not know, a
    database holding data unless `overwrite`, and a home whose server is running. Returns
    the row counts and revision after the restore, and ``erasures_to_reapply``: subjects
    the erasure log (the replaced database's, and `erasures`, a backup's `erasures.jsonl`)
    names that the backup still holds (`app.services.rights.reapply_erasures` erases them).
    """
    manifest = read_manifest(source)
    url = make_url(settings.resolved_database_url)
    kind = "postgresql" if url.get_backend_name() == "postgresql" else "sqlite"
    if manifest["database_kind"] != kind:
        raise BackupError(
            f"{source} is a backup of a {manifest['database_kind']} database; "
            f"WAJAH_DATABASE_URL names a {kind} one"
        )
    _check_revision(manifest)
    with step("checking the dump's SHA-256"):
        _check_sha256(source / manifest["dump"]["file"], manifest["dump"]["sha256"])
    extra = read_erasures(erasures) if erasures is not None else []
    with _index_lock(settings.resolved_index_dir), _sqlite_claim(url):
        with step("keeping the erasure log, keyring state and subject keys"):
            carried = _carry(settings, url, extra)
        if kind == "postgresql":
            _restore_postgres(manifest, source, url, overwrite, step)
        else:
            _restore_sqlite(manifest, source, Path(url.database or ""), overwrite, step)
        _restore_files(manifest, source, settings, step)
        # The snapshots hold positions of the database as it was; it went back in time.
        for snapshot in settings.resolved_index_dir.glob(f"*{SNAPSHOT_SUFFIX}"):
            snapshot.unlink()
        with step("migrating the schema to head"):
            engine = create_engine_for(url)
            try:
                upgrade_database(engine)
                with step("putting back the erasure log, keyring state and subject keys"):
                    pending = _put_back(engine, carried, settings)
                (settings.home / CARRY_FILE).unlink(missing_ok=True)
                with engine.connect() as conn:
                    revision = current_revision(conn)
                    return {
                        "alembic_revision": revision,
                        "row_counts": _counts(conn),
                        "erasures_to_reapply": pending,
                    }
            finally:
                engine.dispose()


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of the backup in `source`, checked for format and shape."""
    if not source.exists():
        raise BackupError(f"no backup at {source}: the path does not exist")
    path = source / MANIFEST
    if not path.is_file():
        raise BackupError(f"{source} has no {MANIFEST}: not a wajah backup, or an unfinished one")
    try:
        parsed = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"cannot read {path}: {exc}") from None
    manifest: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    found = manifest.get("format")
    if found != FORMAT:
        raise BackupError(f"{path} is of format {found!r}; this wajah restores {FORMAT!r} only")
    dump = manifest.get("dump")
    counts = manifest.get("row_counts")
    if not (
        manifest.get("database_kind") in ("postgresql", "sqlite")
        and isinstance(dump, dict)
        and dump.get("file") in (PG_DUMP_FILE, SQLITE_FILE)
        and _HEX64.fullmatch(str(dump.get("sha256")))
        and isinstance(counts, dict)
        and all(isinstance(counts.get(t), int) for t in COUNTED_TABLES)
        and (manifest["database_kind"] == "sqlite" or isinstance(manifest.get("schema"), str))
    ):
        raise BackupError(f"{path} is damaged: a field is missing or malformed")
    return manifest


def _check_revision(manifest: dict[str, Any]) -> None:
    revision = manifest.get("alembic_revision")
    if revision is None:
        return
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(str(revision))
    except Exception:  # alembic raises several kinds for an unknown revision
        raise BackupError(
            f"the backup is at schema revision {revision!r}, which this wajah does not know: "
            f"restore it with wajah {manifest.get('wajah_version')} or newer"
        ) from None


def _check_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise BackupError(f"the backup's database file {path} is missing")
    if _sha256(path) != expected:
        raise BackupError(
            f"{path} does not match the SHA-256 in the manifest: the backup is damaged "
            "or was changed; restore another one"
        )


@contextmanager
def _index_lock(index_dir: Path) -> Iterator[None]:
    """Hold the lock a server takes on its index directory (`index.IndexRegistry`), so that
    no server starts on this home while the restore runs, and none is running now."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BackupError(
                f"a server is running on this home (it holds {index_dir}): stop every "
                "server that uses the database before restoring"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _sqlite_claim(url: URL) -> Iterator[None]:
    """On SQLite, hold the claim a server takes on the database file (`claim_database`): a
    server on another home that uses the same file is refused too."""
    if url.get_backend_name() != "sqlite" or not url.database:
        yield
        return
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine_for(url)
    try:
        claim = claim_database(engine)
    except DatabaseInUseError:
        raise BackupError(f"a server is serving {url.database}: stop it before restoring") from None
    finally:
        engine.dispose()
    try:
        yield
    finally:
        if claim is not None:
            claim.release()


def _refuse_data(counts: dict[str, int], where: str, overwrite: bool) -> None:
    held = {table: n for table, n in counts.items() if n}
    if held and not overwrite:
        listed = ", ".join(f"{n} {table}" for table, n in held.items())
        raise BackupError(
            f"{where} is not empty ({listed}); a restore replaces all of it: "
            "pass --yes to overwrite it"
        )


def _restore_postgres(
    manifest: dict[str, Any], source: Path, url: URL, overwrite: bool, step: Step
) -> None:
    pg_restore, psql = _tool("pg_restore"), _tool("psql")
    schema = manifest["schema"]
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            target = _schema(conn)
            counts = _counts(conn, DATA_TABLES)
    except sa.exc.OperationalError as exc:
        raise BackupError(f"cannot reach the database: {exc.orig}") from None
    finally:
        engine.dispose()
    if target != schema:
        raise BackupError(
            f"the backup holds schema {schema!r}; WAJAH_DATABASE_URL writes to {target!r} "
            "(set its search_path to the backup's schema)"
        )
    _refuse_data(counts, f"schema {schema!r} of the database", overwrite)
    uri, env = _libpq(url)
    with step(f"restoring schema {schema} with pg_restore (one transaction)"):
        _apply_dump(
            [pg_restore, "--clean", "--if-exists", "--no-owner", "--file=-"],
            source / manifest["dump"]["file"],
            [psql, "-X", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1", f"--dbname={uri}"],
            env,
            _pg_prologue(schema),
            _pg_epilogue(schema, manifest["row_counts"]),
        )


def _pg_prologue(schema: str) -> str:
    # `--clean` drops only what the dump holds; a newer service's tables (restoring an older
    # backup) would stay and clash with its migrations, so the whole schema goes first.
    return (
        f"SET lock_timeout = '{LOCK_TIMEOUT}';\n"
        "SET client_min_messages = warning;\n"
        "BEGIN;\n"
        f"DROP SCHEMA IF EXISTS {_quote(schema)} CASCADE;\n"
    )


def _pg_epilogue(schema: str, counts: dict[str, int]) -> str:
    """Row-count checks that abort the transaction on a mismatch, then the COMMIT."""
    checks = "".join(
        f"  SELECT count(*) INTO n FROM {_quote(schema)}.{_quote(table)};\n"
        f"  IF n <> {int(counts[table])} THEN RAISE EXCEPTION "
        f"'% {table} rows restored; the manifest says {int(counts[table])}', n; END IF;\n"
        for table in COUNTED_TABLES
    )
    return f"DO $$\nDECLARE n bigint;\nBEGIN\n{checks}END $$;\nCOMMIT;\n"


def _apply_dump(
    reader: list[str], dump: Path, applier: list[str], env: dict[str, str], head: str, tail: str
) -> None:
    """Pipe `pg_restore`'s SQL through `psql` inside one transaction that we open and commit:
    the COMMIT is sent only after `pg_restore` has exited cleanly, so a failure anywhere
    leaves the database as it was (psql stops at the first error; an open transaction is
    rolled back when it disconnects)."""
    with tempfile.TemporaryFile() as reader_err, tempfile.TemporaryFile() as applier_err:
        with subprocess.Popen(
            applier, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=applier_err, env=env
        ) as apply_proc:
            assert apply_proc.stdin is not None
            reader_rc = 1
            try:
                with subprocess.Popen(
                    [*reader, str(dump)], stdout=subprocess.PIPE, stderr=reader_err
                ) as read_proc:
                    assert read_proc.stdout is not None
                    apply_proc.stdin.write(head.encode())
                    shutil.copyfileobj(read_proc.stdout, apply_proc.stdin, _CHUNK)
                    reader_rc = read_proc.wait()
                if reader_rc == 0:
                    apply_proc.stdin.write(tail.encode())
                apply_proc.stdin.close()
            except BrokenPipeError:
                pass  # psql stopped at an error: its stderr says which
            applier_rc = apply_proc.wait()
        if applier_rc != 0:
            raise BackupError(f"psql failed, nothing was restored: {_tail(applier_err)}")
        if reader_rc != 0:
            raise BackupError(f"pg_restore failed, nothing was restored: {_tail(reader_err)}")


def _restore_sqlite(
    manifest: dict[str, Any], source: Path, target: Path, overwrite: bool, step: Step
) -> None:
    backup_file = source / manifest["dump"]["file"]
    with closing(sqlite3.connect(backup_file.as_uri() + "?mode=ro", uri=True)) as src:
        found = _sqlite_counts(src)
        if found != {t: manifest["row_counts"][t] for t in COUNTED_TABLES}:
            raise BackupError(f"{backup_file} holds {found} rows; the manifest says otherwise")
        if target.exists():
            with closing(sqlite3.connect(target)) as current:
                _refuse_data(_sqlite_counts(current, DATA_TABLES), str(target), overwrite)
        target.parent.mkdir(parents=True, exist_ok=True)
        with step("restoring the SQLite database"), closing(sqlite3.connect(target)) as dst:
            dst.execute("PRAGMA busy_timeout = 10000")
            # The backup API writes through the destination's pager in one transaction:
            # atomic, and correct whatever its journal (a WAL left by a crash included).
            src.backup(dst)


def _restore_files(manifest: dict[str, Any], source: Path, settings: Settings, step: Step) -> None:
    if KEYRING_FILE in manifest.get("files", {}) and not _keeps_keyring_file(
        settings, source / KEYRING_FILE
    ):
        with step("restoring the keyring state"):
            saved = manifest["files"][KEYRING_FILE]
            _check_sha256(source / KEYRING_FILE, saved["sha256"])
            target = settings.home / KEYRING_FILE
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            crashsafe.write_bytes(target, (source / KEYRING_FILE).read_bytes(), mode=0o600)
    objects = manifest.get("objects")
    if objects:
        with step(f"restoring {objects['count']} sealed frames"):
            _replace_tree(source / OBJECTS_DIR, settings.resolved_object_store_dir, objects)


def _replace_tree(source: Path, target: Path, expected: dict[str, Any]) -> None:
    """Copy `source` beside `target`, check it, then swap it in with two renames."""
    staging = target.with_name(f".{target.name}.restoring")
    retired = target.with_name(f".{target.name}.replaced")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    count, _ = _copy_tree(source, staging)
    if count != expected["count"]:
        shutil.rmtree(staging)
        raise BackupError(f"{source} holds {count} sealed frames; the manifest says {expected}")
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    crashsafe.fsync_dir(target.parent)
    shutil.rmtree(retired, ignore_errors=True)


# --- what a restore keeps from the database it replaces ----------------------------------------


@dataclass
class Carried:
    """Read from the database before a restore replaces it (see the module docstring)."""

    erasures: list[Erasure] = field(default_factory=list)
    subject_keys: list[dict[str, Any]] = field(default_factory=list)
    keyring_rows: list[dict[str, Any]] = field(default_factory=list)
    keyring_file_id: str | None = None  # keyring_id of WAJAH_HOME/keys/keyring.json
    closures: list[dict[str, Any]] = field(default_factory=list)


def _carry(settings: Settings, url: URL, extra: list[Erasure]) -> Carried:
    """What the restore must keep, from the current database (if there is one), from the
    carry file of a restore that stopped midway (it came from a newer database), and from
    an erasures file; written to the carry file before anything is dropped."""
    carry_path = settings.home / CARRY_FILE
    carried = _read_carry(carry_path) if carry_path.is_file() else Carried()
    if url.get_backend_name() == "postgresql" or Path(url.database or "").is_file():
        engine = create_engine_for(url)
        try:
            with engine.connect() as conn:
                current = Carried(
                    rights.erasures(conn),
                    rights.carried_rows(conn, "subject_keys"),
                    rights.carried_rows(conn, "keyring_state"),
                    closures=rights.carried_rows(conn, "org_closures"),
                )
        except sa.exc.OperationalError as exc:
            raise BackupError(f"cannot reach the database: {exc.orig}") from None
        finally:
            engine.dispose()
        if not carry_path.is_file():
            carried.subject_keys, carried.keyring_rows = current.subject_keys, current.keyring_rows
            carried.closures = current.closures
        carried.erasures += current.erasures
    carried.erasures += extra
    carried.keyring_file_id = _keyring_id_of(settings.home / KEYRING_FILE)
    settings.home.mkdir(parents=True, exist_ok=True)
    crashsafe.write_bytes(carry_path, _encode_carry(carried), mode=0o600)
    return carried


def _put_back(engine: sa.Engine, carried: Carried, settings: Settings) -> int:
    """Put the carried rows into the restored (and migrated) database, in one transaction;
    how many logged erasures the restored database still has to re-apply."""
    with write_transaction(engine) as conn:
        restored_ids = {_state_id(r["state"]) for r in rights.carried_rows(conn, "keyring_state")}
        restored_ids.add(_keyring_id_of(settings.home / KEYRING_FILE))
        current_ids = {_state_id(r["state"]) for r in carried.keyring_rows}
        current_ids.add(carried.keyring_file_id)
        if (restored_ids & current_ids) - {None}:
            # The same keyring, and ours is newer: destroyed versions and erased subjects'
            # keys stay gone; a rotated root key keeps opening what the backup sealed.
            if carried.keyring_rows:
                rights.replace_rows(conn, "keyring_state", carried.keyring_rows)
            orgs = rights.org_ids(conn)
            keys = [k for k in carried.subject_keys if k["org_id"] in orgs]
            rights.replace_rows(conn, "subject_keys", keys)
        for entry in carried.erasures:
            rights.log_erasure(conn, entry)
        rights.put_back_closures(conn, carried.closures, utcnow())
        return len(rights.erased_subjects_still_live(conn))


def _keyring_id_of(path: Path) -> str | None:
    try:
        return _state_id(path.read_text("utf-8"))
    except OSError:
        return None


def _state_id(text: str) -> str | None:
    try:
        state = json.loads(text)
    except ValueError:
        return None
    found = state.get("keyring_id") if isinstance(state, dict) else None
    return str(found) if found else None


def _keeps_keyring_file(settings: Settings, backed_up: Path) -> bool:
    """Keep this home's keyring file rather than the backup's: it is the same keyring,
    and newer."""
    current = _keyring_id_of(settings.home / KEYRING_FILE)
    return current is not None and current == _keyring_id_of(backed_up)


def _write_erasures(url: URL, target: Path) -> dict[str, Any]:
    """The erasure log as JSON lines beside the backup (read after the database copy, so it
    holds at least every erasure the copy does)."""
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            entries = rights.erasures(conn)
    finally:
        engine.dispose()
    data = b"".join(json.dumps(_erasure_json(e), sort_keys=True).encode() + b"\n" for e in entries)
    crashsafe.write_bytes(target, data, mode=0o600)
    return {"file": ERASURES_FILE, "count": len(entries)}


def _erasure_json(entry: Erasure) -> dict[str, str]:
    return {
        "org_id": entry.org_id,
        "subject_id": entry.subject_id,
        "erased_at": entry.erased_at.isoformat(),
        "receipt_sha256": entry.receipt_sha256,
    }


def read_erasures(path: Path) -> list[Erasure]:
    """An erasures file (`erasures.jsonl` of a backup); refuses anything malformed."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read erasures file {path}: {exc}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            moment = datetime.fromisoformat(item["erased_at"])
            entry = Erasure(
                str(item["org_id"]), str(item["subject_id"]), moment, str(item["receipt_sha256"])
            )
        except (ValueError, TypeError, KeyError):
            raise BackupError(f"{path} line {number} is not an erasure-log entry") from None
        if moment.tzinfo is None or not _HEX64.fullmatch(entry.receipt_sha256):
            raise BackupError(f"{path} line {number} is not an erasure-log entry")
        entries.append(entry)
    return entries


def _encode_carry(carried: Carried) -> bytes:
    def plain(row: dict[str, Any]) -> dict[str, Any]:
        return {
            k: {"b64": base64.b64encode(bytes(v)).decode()}
            if isinstance(v, bytes | memoryview)
            else {"t": v.isoformat()}
            if isinstance(v, datetime)
            else v
            for k, v in row.items()
        }

    return json.dumps(
        {
            "format": CARRY_FORMAT,
            "erasures": [_erasure_json(e) for e in carried.erasures],
            "subject_keys": [plain(r) for r in carried.subject_keys],
            "keyring_rows": [plain(r) for r in carried.keyring_rows],
            "closures": [plain(r) for r in carried.closures],
        }
    ).encode()


def _read_carry(path: Path) -> Carried:
    def typed(row: dict[str, Any]) -> dict[str, Any]:
        return {
            k: base64.b64decode(v["b64"])
            if isinstance(v, dict) and "b64" in v
            else datetime.fromisoformat(v["t"])
            if isinstance(v, dict) and "t" in v
            else v
            for k, v in row.items()
        }

    try:
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("format") != CARRY_FORMAT:
            raise ValueError("format")
        erasures = [
            Erasure(
                e["org_id"],
                e["subject_id"],
                datetime.fromisoformat(e["erased_at"]),
                e["receipt_sha256"],
            )
            for e in doc["erasures"]
        ]
        return Carried(
            erasures,
            [typed(r) for r in doc["subject_keys"]],
            [typed(r) for r in doc["keyring_rows"]],
            closures=[typed(r) for r in doc.get("closures", [])],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            f"{path} (left by a restore that stopped midway) is damaged: {exc}; it holds the "
            "erasure log of the database that restore replaced: repair it or remove it"
        ) from None


# --- helpers ------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} not found on PATH: install the PostgreSQL client tools of the server's "
            "major version (Debian: postgresql-client-15)"
        )
    return path


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """The libpq URI of a SQLAlchemy URL (query options such as `options=-csearch_path=...`
    kept) and the environment to run a client with: the password goes in PGPASSWORD, never
    on a command line that `ps` shows."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    plain = URL.create(
        "postgresql",
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )
    return plain.render_as_string(hide_password=False), env


def _run(command: list[str], env: dict[str, str], name: str) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{name} failed: {_last_lines(done.stderr)}")


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    return _last_lines(stream.read().decode("utf-8", "replace"))


def _last_lines(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) or "no message"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _schema(conn: Connection) -> str:
    """The schema the service writes to: the URL's search_path's first schema."""
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
    if schema is None:  # the schema the search_path names does not exist (yet)
        first = str(conn.exec_driver_sql("SHOW search_path").scalar_one()).split(",")[0]
        schema = first.strip().strip('"')
        if schema == "$user":
            schema = conn.exec_driver_sql("SELECT current_user").scalar_one()
    return str(schema)


def _counts(conn: Connection, tables: tuple[str, ...] = COUNTED_TABLES) -> dict[str, int]:
    """Rows per table in the URL's schema; 0 for a table that does not exist."""
    present = set(sa.inspect(conn).get_table_names())
    count = sa.select(sa.func.count())
    return {
        t: int(conn.execute(count.select_from(sa.table(t))).scalar_one()) if t in present else 0
        for t in tables
    }


def _sqlite_counts(
    conn: sqlite3.Connection, tables: tuple[str, ...] = COUNTED_TABLES
) -> dict[str, int]:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {
        t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) if t in present else 0
        for t in tables
    }


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else str(row[0])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(path: Path, step: Step) -> dict[str, Any]:
    with step("computing the dump's SHA-256"):
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _fsync(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())
    crashsafe.fsync_dir(path.parent)


def _copy_file(source: Path, target: Path) -> dict[str, Any]:
    """Copy durably (fsynced); the copy's size and SHA-256."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = source.read_bytes()
    crashsafe.write_bytes(target, data, mode=0o600)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _copy_tree(source: Path, target: Path) -> tuple[int, int]:
    """Copy every file under `source`, each fsynced, then every directory; skips temp files
    (dot names) and files that vanish meanwhile (a frame erased while a server runs).
    Returns (files, bytes) copied."""
    count = size = 0
    for directory, subdirs, names in os.walk(source):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        here = target / Path(directory).relative_to(source)
        here.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in names:
            if name.startswith("."):
                continue
            try:
                size += _copy_durably(Path(directory) / name, here / name)
            except FileNotFoundError:
                continue
            count += 1
    for directory, _, _ in os.walk(target):
        crashsafe.fsync_dir(directory)
    crashsafe.fsync_dir(target.parent)
    return count, size


def _copy_durably(source: Path, target: Path) -> int:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with source.open("rb") as src, open(fd, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
        return dst.tell()
