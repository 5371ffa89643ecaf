"""Entry-point plumbing shared by CLI commands: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

err_console = Console(stderr=True, highlight=False)


def configure_logging(verbose: bool) -> None:
    """Logging is configured here, at the entry point only; library code just logs."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextmanager
def one_line_errors(expected: tuple[type[BaseException], ...], debug: bool = False) -> Iterator[None]:
    """Expected errors print as ``error: <message>`` (exit 2); anything else as one line
    naming the exception (exit 3), with the traceback only under ``--debug``."""
    try:
        yield
    except expected as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {exc.__class__.__name__}: {exc} (run with --debug for details)",
            soft_wrap=True,
        )
        raise typer.Exit(3) from None
