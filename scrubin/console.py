"""Entry-point plumbing shared by CLI commands: logging set-up and one-line errors.

The error printer cannot itself fail: messages are printed as plain text (never read as
rich markup), on one line (control characters escaped), after an optional redaction.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import typer
from rich.console import Console
from rich.text import Text

err_console = Console(stderr=True, highlight=False)
log = logging.getLogger(__name__)

Redact = Callable[[str], str]
# Line breaks, C0/C1 controls (terminal escape sequences), DEL and bidirectional overrides.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LIBRARY_LINES = 20  # lines of captured library output kept for the verbose log
# Libraries that log through Python's ``logging`` at WARNING while reading odd but usable
# files (pydicom: "Expected explicit VR, but found implicit VR"): their records, and their
# modules' (``pydicom.pixels.utils``), go to the verbose log, not to the terminal.
LIBRARY_LOGGERS = ("pydicom",)


def configure_logging(verbose: bool) -> None:
    """Logging is configured here, at the entry point only; library code just logs."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def one_line(text: str) -> str:
    """``text`` as one terminal-safe line: control characters, line breaks and bytes that
    were not valid UTF-8 (file names) are shown as Python escapes (``\\n``, ``\\x1b``)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def plain(text: str, style: str = "") -> Text:
    """A rich ``Text`` of ``text`` on one line: printed as is, never read as markup."""
    return Text(one_line(text), style=style)


def print_error(label: str, message: str) -> None:
    """``label message`` on stderr; falls back to the raw file descriptor if rich fails."""
    text = f"{label} {one_line(message)}" if label else one_line(message)
    try:
        line = Text.assemble((label, "bold red"), " ", one_line(message)) if label else Text(text)
        err_console.print(line, soft_wrap=True)
    except Exception:
        os.write(2, f"{text}\n".encode("ascii", "backslashreplace"))


def _message(exc: BaseException, redact: Redact | None) -> str:
    try:
        text = str(exc)
    except Exception:
        return f"{exc.__class__.__name__} (its message could not be printed)"
    if redact is None:
        return text
    try:
        return redact(text)
    except Exception:
        return f"{exc.__class__.__name__} (message withheld: it could not be checked for identifiers)"


@contextmanager
def one_line_errors(
    expected: tuple[type[BaseException], ...], debug: bool = False, redact: Redact | None = None
) -> Iterator[None]:
    """Expected errors print as ``error: <message>`` (exit 2); anything else as one line
    naming the exception (exit 3), with the traceback only under ``--debug``. ``redact``
    takes identifiers out of the message first."""
    try:
        yield
    except expected as exc:
        print_error("error:", _message(exc, redact))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        print_error("", "interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        print_error(
            "internal error:", f"{exc.__class__.__name__}: {_message(exc, redact)} (run with --debug for details)"
        )
        raise typer.Exit(3) from None


class _RedactRecords(logging.Filter):
    def __init__(self, redact: Redact) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = one_line(self._redact(record.getMessage()))
        except Exception:
            record.msg = f"(a {record.name} message withheld: it could not be checked for identifiers)"
        record.args = ()
        return True


@contextmanager
def library_output_to_log(redact: Redact | None = None) -> Iterator[None]:
    """What libraries print goes to the log (INFO: shown with ``--verbose``), never straight
    to the terminal: ITK, GDCM and MetaIO write to file descriptor 2 from C++, numpy and
    pydicom warn through Python's ``warnings``, pydicom logs to its ``logging`` logger. Log
    records pass through ``redact`` meanwhile."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    filtered = handlers if redact is not None else []
    record_filter = _RedactRecords(redact or str)
    for handler in filtered:
        handler.addFilter(record_filter)
    try:
        with warnings.catch_warnings(), _library_loggers_to_log(), _native_stderr_captured(handlers):
            warnings.showwarning = _log_warning
            yield
    finally:
        for handler in filtered:
            handler.removeFilter(record_filter)


def _log_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    log.info("library warning: %s: %s", category.__name__, message)


class _ToVerboseLog(logging.Handler):
    """A library's log record, whatever its level, logged again here at INFO."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log.info("library log: %s: %s", record.name, record.getMessage())
        except Exception:  # a record whose message cannot be formatted is dropped, never raised
            log.info("library log: %s: (a message that could not be formatted)", record.name)


@contextmanager
def _library_loggers_to_log() -> Iterator[None]:
    """``LIBRARY_LOGGERS`` (and their children, which propagate to them) stop propagating to
    the root logger's terminal handler; a handler logs their records again at INFO."""
    handler = _ToVerboseLog()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, propagate in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.propagate = propagate


@contextmanager
def _native_stderr_captured(handlers: list[logging.StreamHandler[Any]]) -> Iterator[None]:
    """File descriptor 2 into a temporary file; Python's ``sys.stderr`` (the error line, the
    log) keeps writing to the terminal through a duplicate of the original descriptor."""
    try:
        sys.stderr.flush()
        original_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's buffer)
        yield
        return
    old_stderr = sys.stderr
    terminal: IO[str] = os.fdopen(os.dup(original_fd), "w", encoding="utf-8", errors="backslashreplace", buffering=1)
    saved_fd = os.dup(2)
    moved = [h for h in handlers if h.stream is old_stderr]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        sys.stderr = terminal
        for handler in moved:
            handler.setStream(terminal)
        try:
            yield
        finally:
            terminal.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.stderr = old_stderr
            for handler in moved:
                handler.setStream(old_stderr)
            terminal.close()
            _log_captured(capture)


def _log_captured(capture: IO[bytes]) -> None:
    capture.seek(max(0, capture.seek(0, os.SEEK_END) - 8000))
    lines = [ln for ln in capture.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    for line in lines[-_LIBRARY_LINES:]:
        log.info("library output: %s", line.strip()[:200])
