"""200 mentor connect/close cycles (issue 7): RSS of the server process before and after.

Each cycle: a Python aiortc viewer connects (offer, ICE, DTLS, data channel), pings, closes;
half of them receive video ('low'), half are annotation-only. Frames and poses are pushed at
15 fps meanwhile. Pass: RSS growth < 50 MB after a 10-cycle warm-up.

    .venv/bin/python bench/bench_mentor_cycles.py [--quick (50 cycles)] [--cycles N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
RESULTS = REPO / "bench" / "results"


def main() -> int:
    from mentor_fixtures import FramePump, Published, make_scene, serve, stop
    from test_reliability_mentor_faults import one_cycle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 50 if args.quick else args.cycles
    scene, proc = make_scene(), psutil.Process()
    s = serve(scene, Path(tempfile.mkdtemp(prefix="cycles-")), Published())
    rss: list[float] = []
    times: list[float] = []

    async def run() -> None:
        for i in range(10):
            await one_cycle(s, "low" if i % 2 else "none")
        gc.collect()
        rss.append(proc.memory_info().rss / 1e6)
        for i in range(n):
            t = time.perf_counter()
            await one_cycle(s, "low" if i % 2 else "none")
            times.append((time.perf_counter() - t) * 1e3)
            if (i + 1) % 10 == 0:
                gc.collect()
                rss.append(proc.memory_info().rss / 1e6)

    try:
        with FramePump(s.room, scene, fps=15.0):
            asyncio.run(run())
    finally:
        stop(s)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    growth = max(rss) - rss[0]
    out = {"cycles": n, "rss_mb": rss, "rss_growth_mb": growth, "cycle_ms_median": float(np.median(times)),
           "cycle_ms_p99": float(np.percentile(times, 99)), "pass": growth < 50.0}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mentor_cycles.json").write_text(json.dumps(out, indent=1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([10 * i for i in range(len(rss))], rss, marker=".")
    ax.set(xlabel="cycles after warm-up", ylabel="RSS (MB)", title=f"{n} connect/close cycles: +{growth:.1f} MB")
    fig.tight_layout()
    fig.savefig(RESULTS / "mentor_cycles.png", dpi=90)
    print(f"{n} cycles: RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (max growth {growth:.1f} MB, < 50); "
          f"cycle median {out['cycle_ms_median']:.0f} ms, p99 {out['cycle_ms_p99']:.0f} ms; "
          f"{'PASS' if out['pass'] else 'FAIL'}")  # fmt: skip
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
