"""Run a header parser in a child process with a memory cap and a deadline.

Third-party readers (SimpleITK/ITK, pydicom) parse whatever header they are given. A hostile
or damaged one can make them recurse without end, allocate what the header declares, spin,
or crash the interpreter. The header/metadata step therefore runs in a forked child with
``RLIMIT_AS`` (address space beyond what the parent already maps) and a wall-clock
deadline; whatever goes wrong there comes back as one ``InputError`` naming the file and
the problem, and the caller's process is never at risk. Pixels are read afterwards in the
caller, once the header has been checked (size, memory budget, geometry).

``fork`` is used rather than a fresh interpreter: the child already has the engines
imported, so the guard costs a few milliseconds, not the ~0.5 s of starting Python and
importing SimpleITK again (see docs/reliability.md for the measured overhead).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import pickle
import resource
import select
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from imaging.errors import ImagingError, InputError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Environment switch for debugging a reader under a debugger or profiler; never needed in use.
DISABLE_ENV = "SCRUBIN_UNGUARDED_HEADERS"


@dataclass(frozen=True)
class Limits:
    """Bounds for one guarded header read."""

    timeout_s: float = 30.0  # a CT header parses in milliseconds; 30 s only catches hangs
    memory_bytes: int = 2 * 1024**3  # address space the child may add to what it inherited

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.memory_bytes <= 0:
            msg = f"guard limits must be positive, got timeout_s={self.timeout_s!r} memory_bytes={self.memory_bytes!r}"
            raise ValueError(msg)


DEFAULT_LIMITS = Limits()


def run_guarded(where: Path | str, task: str, fn: Callable[[], T], limits: Limits = DEFAULT_LIMITS) -> T:
    """``fn()`` computed in a forked child; its result must pickle.

    An ``ImagingError`` raised by ``fn`` is re-raised as is; any other failure (exception,
    memory cap, deadline, crash) becomes an ``InputError`` "WHERE: TASK ..." naming it.
    """
    if not hasattr(os, "fork") or os.environ.get(DISABLE_ENV):
        return fn()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_fd)
        _child(fn, write_fd, limits.memory_bytes)
    os.close(write_fd)
    try:
        data, timed_out = _read_until(read_fd, time.monotonic() + limits.timeout_s)
    finally:
        os.close(read_fd)
        status = _reap(pid)
    if timed_out:
        msg = f"{where}: {task} took over {limits.timeout_s:g} s; refused (damaged or hostile file?)"
        raise InputError(msg)
    return cast(T, _outcome(where, task, data, status, limits))


def _child(fn: Callable[[], object], write_fd: int, memory_bytes: int) -> None:
    """Compute, pickle, write, and leave with ``os._exit`` (no atexit, no inherited cleanup)."""
    code = 0
    try:
        # A crash is reported by the parent as one line; no C-level traceback on stderr.
        faulthandler.disable()
        _cap_address_space(memory_bytes)
        kind, value, notes = _compute(fn)
        try:
            blob = pickle.dumps((kind, value, notes), protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            blob = pickle.dumps(("memory", None, []))
        view = memoryview(blob)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        code = 70  # could not even report: the parent sees an empty reply
    finally:
        os._exit(code)


def _compute(fn: Callable[[], object]) -> tuple[str, object, list[str]]:
    """(kind, value, notes). What readers print (C libraries straight to fd 2, Python
    warnings, inherited log handlers) becomes notes for the parent's log, not terminal noise."""
    with tempfile.TemporaryFile() as stderr, warnings.catch_warnings(record=True) as caught:
        os.dup2(stderr.fileno(), 2)
        warnings.simplefilter("always")
        try:
            outcome: tuple[str, object] = ("ok", fn())
        except ImagingError as exc:
            outcome = ("imaging", exc)
        except MemoryError:
            outcome = ("memory", None)
        except BaseException as exc:  # the parent turns it into one InputError line
            outcome = ("failed", f"{exc.__class__.__name__}: {str(exc)[:160]}")
        sys.stderr.flush()
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4000))
        printed = [ln[:200] for ln in stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    notes = sorted({str(w.message)[:200] for w in caught})[:20] + printed[-20:]
    return outcome[0], outcome[1], notes


def _cap_address_space(extra_bytes: int) -> None:
    current = _mapped_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _mapped_bytes() -> int:
    """The process's current virtual size (VmSize), which RLIMIT_AS counts against."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything the child writes until it closes the pipe; (data, timed_out)."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def _reap(pid: int) -> int:
    """Kill the child if it is still running (deadline, or an interrupt), then reap it."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return status


def killed_by(status: int) -> str | None:
    """The signal that ended a child (``os.waitpid`` status), by name; None if it exited."""
    return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None


def _outcome(where: Path | str, task: str, data: bytes, status: int, limits: Limits) -> object:
    if not data:
        if (name := killed_by(status)) is not None:
            msg = f"{where}: {task} crashed the reader ({name}); refused (damaged or hostile file?)"
        else:
            msg = f"{where}: {task} failed without a result (exit status {os.waitstatus_to_exitcode(status)})"
        raise InputError(msg)
    kind, value, notes = pickle.loads(data)
    for note in notes:
        log.info("%s: %s: reader warned: %s", where, task, note)
    if kind == "ok":
        return value
    if kind == "imaging":
        raise value
    if kind == "memory":
        msg = f"{where}: {task} needed more than {limits.memory_bytes / 1024**2:.0f} MiB of memory; refused (damaged or hostile file?)"
        raise InputError(msg)
    msg = f"{where}: {task} failed ({value})"
    raise InputError(msg)
