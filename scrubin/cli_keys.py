"""``scrubin keys``: CurveZMQ key pairs for the headset bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(help="CurveZMQ key pairs for the headset bridge (server and headsets).", no_args_is_help=True)


@keys_app.callback()
def _group() -> None:
    """CurveZMQ key pairs for the headset bridge."""


@keys_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Key name, e.g. the headset's name; files NAME.key and NAME.key_secret.")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder to write the certificate files into.")] = Path(
        "keys"
    ),
) -> None:
    """Make a key pair: NAME.key (public, for the allowlist) and NAME.key_secret (mode 0600)."""
    from headset_bridge.keys import write_keypair  # keep CLI start-up light

    try:
        public_path, secret_path = write_keypair(directory, name)
    except (ValueError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"public: {public_path}")
    typer.echo(f"secret: {secret_path} (mode 0600; keep it on the device only)")


if __name__ == "__main__":
    keys_app()
