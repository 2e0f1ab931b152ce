"""The `wajah` command line: serve, model packs, and operator tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.settings import Settings
from models.errors import ModelPackError
from models.packs import load_pack
from models.prepare import ARCFACE_PACKS, DEFAULT_PACK_ID, fetch_arcface_pack, resolve_pack

cli = typer.Typer(
    help="wajah: face-embedding match service for KYC backends.",
    no_args_is_help=True,
    add_completion=False,
)
models_cli = typer.Typer(help="Model packs: list, prepare, verify, fetch.", no_args_is_help=True)
cli.add_typer(models_cli, name="models")

console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
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
) -> None:
    """Start the HTTP service (prepares the default model pack on first start)."""
    import uvicorn

    from app.main import create_app

    settings = _settings()
    try:
        resolve_pack(settings.model_pack, settings.models_dir, settings.model_dir, console.print)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
    )


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
    """Prepare a pack (idempotent): fold the default pack, or write an ArcFace manifest."""
    settings = _settings()
    try:
        ready = resolve_pack(pack, settings.models_dir, directory, console.print)
    except ModelPackError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{ready.model_id} ready at {ready.directory}")


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


def main() -> None:
    cli()
