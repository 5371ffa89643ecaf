"""Interpreter settings for the long-running service processes (``serve``, ``demo``).

Applied at the entry points only, like logging: library code never changes them.
"""

from __future__ import annotations

import os
import sys
from typing import Final

# The service's latency-critical threads (the mentor event loop, the bridge I/O loop) wait
# mostly on sockets and disks; when one wakes while another thread computes, CPython lets
# it wait up to the GIL switch interval (5 ms by default) before handing the GIL over. At
# 1 ms a mark click reached the headsets about 2 ms sooner at p95 (bench_mentor_annotation).
SWITCH_INTERVAL_S: Final = 0.001


def tune_for_service() -> None:
    # The tracker is single-threaded by design; multi-threaded OpenBLAS spin-waits on tiny
    # products and, on a busy 2-core machine, adds milliseconds of jitter (bench_tracking).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.setswitchinterval(SWITCH_INTERVAL_S)
