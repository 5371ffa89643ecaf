"""The memory budget of ``prepare``: estimated from the header, and held while it runs.

Estimate: the peak resident memory of the whole pipeline (load, checks, segmentation,
surfaces, write) measured per input voxel, by the item size of the loaded voxels, on the
worst accepted content (a body filling the field of view with just enough air around it:
the skin mask then spans the grid). ``estimate_peak_bytes`` = ``BASE_BYTES`` + voxels x
``PEAK_BYTES_PER_VOXEL[itemsize]``; bench/memory_prepare.py re-measures the table and
docs/reliability.md has the figures. A volume whose estimate is over the budget is refused
from its header, before any pixel is read.

Enforcement: a header can lie (a 22 KB zlib stream inflates to gigabytes) and an estimate is
only an estimate, so ``run_within_budget`` runs the pipeline in a forked child and polls its
resident set every ``WATCH_INTERVAL_S``; over the budget, the child is killed and the caller
gets one ``InputError`` line; a ``cleanup`` given by the caller then removes what the killed
child left (``prepare``: its staging folder beside ``--out``). The prepare pipeline uses no OpenMP (which does not survive
``fork`` in a process that used it before); ITK's platform threads and VTK's do.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TypeVar, cast

import numpy as np

from imaging.errors import ImagingError, InputError
from imaging.guarded import DISABLE_ENV, killed_by

log = logging.getLogger(__name__)

T = TypeVar("T")
GIB = 1024**3

# Measured with bench/memory_prepare.py (NIfTI in, skin + bone out, 256x256x96 and 512x512x96
# voxels; the slope between the two sizes is the bytes per voxel, the intercept the base):
#   voxel type   head in air   body up to a 1-voxel ring of air   no air (refused after loading)
#   int16            9.6                 34.3                          4.0
#   int32 / f32     13.2                 36.3                          8.0 / 9.0
#   float64         16.7                 40.3                         17.0
#   uint8        (refused after loading: no value can be HU air)       2.0
# intercepts 133..359 MiB. The table holds the worst accepted content, rounded up.
BASE_BYTES = 400 * 1024**2
PEAK_BYTES_PER_VOXEL: Mapping[int, float] = {1: 4.0, 2: 36.0, 4: 38.0, 8: 42.0}
INTERRUPT_GRACE_S = 5.0  # for the child to clean up after Ctrl-C
WATCH_INTERVAL_S = 0.01  # allocation runs at a few GB/s: the overshoot is tens of MB at most
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HEADER = struct.Struct("<Q")


def estimate_peak_bytes(n_voxels: int, itemsize: int) -> int:
    """Peak resident bytes of ``prepare`` for ``n_voxels`` voxels of ``itemsize`` bytes."""
    factor = PEAK_BYTES_PER_VOXEL.get(itemsize, max(PEAK_BYTES_PER_VOXEL.values()))
    return int(BASE_BYTES + n_voxels * factor)


def check_budget(where: object, size: tuple[int, ...], itemsize: int, budget_bytes: int) -> None:
    """Refuse, from the header, a volume whose estimated peak is over ``budget_bytes``."""
    n_voxels = int(np.prod(np.asarray(size, dtype=np.int64)))
    need = estimate_peak_bytes(n_voxels, itemsize)
    if need > budget_bytes:
        factor = PEAK_BYTES_PER_VOXEL.get(itemsize, max(PEAK_BYTES_PER_VOXEL.values()))
        msg = (
            f"{where}: volume of {'x'.join(str(s) for s in size)} voxels needs about {need / GIB:.1f} GiB, "
            f"over the memory budget of {budget_bytes / GIB:.1f} GiB (--max-memory-gb; measured peak of "
            f"{factor:g} bytes per {itemsize}-byte voxel)"
        )
        raise InputError(msg)


Calls = Mapping[str, Callable[..., None] | None]


def run_within_budget(
    where: object,
    budget_bytes: int,
    fn: Callable[[dict[str, Callable[..., None]]], T],
    calls: Calls,
    cleanup: Callable[[int], object] | None = None,
) -> T:
    """``fn(proxies)`` computed in a forked child whose resident memory is held under
    ``budget_bytes``; its result must pickle.

    ``calls`` are the caller's callbacks (progress, series choice...): the child gets proxies
    with the same names, and each call is made here in the caller's process, in order.
    ImagingError and other exceptions raised in the child are raised again here.
    ``cleanup(pid)`` runs once the child has ended, however it ended, and before it is reaped
    (so its id is nobody else's yet): to remove what a killed child could not.
    """
    if not hasattr(os, "fork") or os.environ.get(DISABLE_ENV):
        return fn({name: call or _ignore for name, call in calls.items()})
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_fd)
        _child(fn, calls, write_fd)
    os.close(write_fd)
    interrupted = False
    try:
        outcome = _watch(where, pid, read_fd, budget_bytes, calls)
    except KeyboardInterrupt:
        interrupted = True  # the child got the same Ctrl-C: let it remove its staging folder
        raise
    finally:
        os.close(read_fd)
        status = _stop(pid, INTERRUPT_GRACE_S if interrupted else 0.0, cleanup)
    if outcome is _NO_RESULT:
        raise _no_result(where, status)
    return cast(T, outcome)


_NO_RESULT = object()  # the child ended without sending a result


def _ignore(*_args: object) -> None:
    """Stands in for a callback the caller did not give."""


def _child(fn: Callable[[dict[str, Callable[..., None]]], object], calls: Calls, write_fd: int) -> None:
    code = 0
    try:
        faulthandler.disable()  # a crash is reported by the parent as one line, not a C-level dump
        # The parent may have been writing to these when it forked (a progress bar's thread):
        # fresh objects on the same descriptors, so that no inherited lock is ever waited on.
        sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)

        def send(message: tuple[str, object]) -> None:
            blob = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(_HEADER.pack(len(blob)) + blob)
            while view:
                view = view[os.write(write_fd, view) :]

        proxies = {name: (lambda *args, _n=name: send(("call", (_n, args)))) for name in calls}
        try:
            send(("ok", fn(proxies)))
        except ImagingError as exc:
            send(("raise", exc))
        except BaseException as exc:  # any other failure is the caller's to report, as is
            exc.add_note("in the prepare child process:\n" + "".join(traceback.format_tb(exc.__traceback__))[-4000:])
            send(("raise", _picklable(exc)))
    except BaseException:
        code = 70  # could not report: the parent says so
    finally:
        os._exit(code)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # an exception type that does not pickle: its name and text
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return RuntimeError(text[:500])


def _watch(where: object, pid: int, fd: int, budget_bytes: int, calls: Calls) -> object:
    """Relay the child's calls, watch its resident set, return or raise its outcome."""
    buffer = b""
    peak = 0
    while True:
        ready, _, _ = select.select([fd], [], [], WATCH_INTERVAL_S)
        rss = _resident_bytes(pid)
        peak = max(peak, rss)
        if rss > budget_bytes:
            os.kill(pid, signal.SIGKILL)
            msg = (
                f"{where}: processing needed more than the memory budget of {budget_bytes / GIB:.1f} GiB "
                "(--max-memory-gb); stopped before finishing"
            )
            raise InputError(msg)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return _NO_RESULT
        buffer += chunk
        while len(buffer) >= _HEADER.size and len(buffer) >= _HEADER.size + _HEADER.unpack_from(buffer)[0]:
            size = _HEADER.unpack_from(buffer)[0]
            kind, value = pickle.loads(buffer[_HEADER.size : _HEADER.size + size])
            buffer = buffer[_HEADER.size + size :]
            if kind == "call":
                name, args = value
                call = calls.get(name)
                if call is not None:
                    call(*args)
                continue
            log.info("%s: peak resident memory %.0f MiB (budget %.0f MiB)", where, peak / 2**20, budget_bytes / 2**20)
            if kind == "ok":
                return value
            raise value


def _no_result(where: object, status: int) -> InputError:
    """The error for a child that ended (``os.waitpid`` status) without a result."""
    if (name := killed_by(status)) is not None:
        return InputError(f"{where}: processing crashed ({name}) before finishing")
    return InputError(f"{where}: processing stopped without a result (exit status {os.waitstatus_to_exitcode(status)})")


def _resident_bytes(pid: int) -> int:
    """Resident set of ``pid`` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


def _stop(pid: int, grace_s: float, cleanup: Callable[[int], object] | None) -> int:
    """Kill the child if it still runs after ``grace_s`` (budget, or an exception here);
    once it has ended, ``cleanup(pid)``, then reap it. Its ``os.waitpid`` status."""
    deadline = time.monotonic() + grace_s
    while not _ended(pid) and time.monotonic() < deadline:
        select.select([], [], [], WATCH_INTERVAL_S)
    if not _ended(pid):
        os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # ended, still unreaped: its id is still its own
    try:
        if cleanup is not None:
            cleanup(pid)
    except Exception:  # the run's own outcome is what the caller must hear about
        log.warning("cleaning up after the prepare child failed", exc_info=True)
    finally:
        status = os.waitpid(pid, 0)[1]
    return status


def _ended(pid: int) -> bool:
    """Whether the child has ended (without reaping it)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
