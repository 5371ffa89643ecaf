"""Page load to the first video frame (and to the 3D view loaded): fresh Chromium contexts.

A mentor server with the synthetic scene (tests/mentor_fixtures.py: a sphere, 640x480 video
at 30 fps, poses) runs in a child process, as deployed. One headless Chromium (the system
binary, the project's flag list) stays up; each run opens a NEW browser context (empty cache,
cookies and storage, as a first visit) at 1280x720 and loads the mentor link. The page's own
clock (``performance.now()``, zero at navigation start) times each step:

* ``fetched``  - the HTML's responseEnd (navigation timing);
* ``config``   - the ``/config`` call answered (resource timing), and ``offer`` the SDP offer;
* ``ice``      - RTCPeerConnection ``connected`` (ICE + DTLS; ``mentor.connectedAt``);
* ``frame``    - the first video frame presented (``requestVideoFrameCallback``, installed
  by an init script before the page's scripts run);
* ``3d``       - the 3D view's model parsed and in the scene (``mentor3d.loaded`` set),
  and ``3d_render`` its first drawing.

Competitor, in the same run, alternating with it (A B A B ...): the same page with the 3D view
switched off. The product has no switch for it, so the bench serves an empty module in place
of ``/static/mentor3d.js`` (three.js and the GLB are then never fetched). Both variants route
that one request through Playwright, so they pay the same interception cost.

``--model phantom`` serves imaging's synthetic head phantom skin (at ``--budget`` triangles,
the prepare default 200,000) as the 3D view's GLB instead of the sphere's (~7,000 triangles):
the size a real session loads. The goal (issue 16): page load to first video frame p50 and
p95 <= 1.5 s.

Usage: .venv/bin/python bench/bench_mentor_pageload.py [--runs 20] [--model sphere|phantom]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mentor_fixtures import CHROMIUM, CHROMIUM_FLAGS, SESSION  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_S = 1.5
VARIANTS = ("3D view", "no 3D view")
STEPS = ("fetched", "config", "ice", "frame", "3d", "3d_render")

# Runs before the page's scripts: first presented frame and the 3D view's milestones, in the
# page's performance.now() (0 = navigation start).
INIT = r"""
(() => {
  const t = (window.__bench = { frame: null, view3d: null, render3d: null });
  document.addEventListener("DOMContentLoaded", () => {
    const v = document.getElementById("video");
    if (v && v.requestVideoFrameCallback) v.requestVideoFrameCallback((now) => { t.frame = now; });
  });
  let view;
  const watch = (obj, key, slot, ok) => {
    let value = obj[key];
    Object.defineProperty(obj, key, { configurable: true, enumerable: true, get: () => value,
      set: (x) => { value = x; if (ok(x) && t[slot] === null) t[slot] = performance.now(); } });
  };
  Object.defineProperty(window, "mentor3d", { configurable: true, get: () => view, set: (v) => {
    view = v;
    watch(v, "loaded", "view3d", Boolean);
    watch(v, "renders", "render3d", (n) => n > 0);
  } });
})();
"""

COLLECT = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const res = (s) => {
    const e = performance.getEntriesByType("resource").find((r) => r.name.includes(s));
    return e ? e.responseEnd : null;
  };
  const m = window.mentor || {};
  return { fetched: nav ? nav.responseEnd : null, config: res("/config"), offer: res("/offer"),
    ice: m.connectedAt ?? null, frame: window.__bench.frame, "3d": window.__bench.view3d,
    "3d_render": window.__bench.render3d, glb: res("/model.glb"), three: res("three.min.js"),
    phase: m.phase, error: m.error ?? null, error3d: window.mentor3d ? window.mentor3d.error : null };
}
"""


# ---------------------------------------------------------------------------- server (child)
def serve(model: str, budget: int) -> None:
    from mentor_fixtures import FramePump, Published, make_scene
    from mentor_fixtures import serve as start_server

    scene = make_scene()
    with tempfile.TemporaryDirectory(prefix="bench-pageload-") as tmp:
        served = start_server(scene, Path(tmp), Published())
        served.room.audit = None
        if model == "phantom":
            served.room.model_glb = _phantom_glb(Path(tmp) / "model", budget)
        from mentor.model_view import room_glb

        glb = len(room_glb(served.room))  # the sphere's GLB is written on first use: now, off the clock
        info = {"url": served.server.url_for(SESSION, served.token(ttl_s=3600)), "glb_bytes": glb}
        print(json.dumps(info), flush=True)
        with FramePump(served.room, scene):
            sys.stdin.read()  # until the parent closes the pipe
        served.server.stop()


def _phantom_glb(out: Path, budget: int) -> bytes:
    from imaging.prepare import PrepareOptions, prepare_phantom

    prepare_phantom(out, PrepareOptions(segments=("skin",), triangle_budget=budget))
    return (out / "model.glb").read_bytes()


# ---------------------------------------------------------------------------- browser (parent)
def _launch(pw: Any, profile: str) -> Any:
    return pw.chromium.launch(
        executable_path=str(CHROMIUM),
        ignore_default_args=True,
        args=[*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        timeout=30_000,
    )


def _one_load(browser: Any, url: str, with_3d: bool, timeout_s: float) -> dict[str, Any]:
    """One first visit in a fresh context: the page's step times (ms since navigation start)."""
    # The page's CSP forbids eval; Playwright's wait_for_function needs it (bench-only bypass).
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 720})
    try:
        context.add_init_script(INIT)
        if with_3d:
            context.route("**/static/mentor3d.js", lambda route: route.continue_())
        else:
            context.route(
                "**/static/mentor3d.js",
                lambda route: route.fulfill(status=200, content_type="text/javascript", body="// off\n"),
            )
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(url, wait_until="commit")
        want = "window.__bench && __bench.frame !== null" + (" && __bench.render3d !== null" if with_3d else "")
        ok = True
        try:
            page.wait_for_function(want, polling=20, timeout=timeout_s * 1000)
        except Exception:  # a hang is a failed run, reported below, not the end of the bench
            ok = False
        wall = (time.perf_counter() - t0) * 1000
        out: dict[str, Any] = page.evaluate(COLLECT)
        out |= {"ok": ok, "wall_ms": wall}
        return out
    finally:
        context.close()


def run_loads(url: str, runs: int, timeout_s: float) -> dict[str, list[dict[str, Any]]]:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    profile = tempfile.mkdtemp(prefix="bench-pageload-chromium-")
    out: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        with sync_playwright() as pw:
            browser = _launch(pw, profile)
            try:
                for variant in VARIANTS:  # one warm-up each (browser process caches, JIT), not counted
                    _one_load(browser, url, variant == "3D view", timeout_s)
                for i in range(runs):
                    order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                    for variant in order:
                        r = _one_load(browser, url, variant == "3D view", timeout_s)
                        out[variant].append(r)
                        if not r["ok"]:
                            print(f"  run {i} ({variant}) did not finish: phase {r['phase']}, "
                                  f"error {r['error']!r}, 3D error {r['error3d']!r}", flush=True)  # fmt: skip
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- report
def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if xs else float("nan")


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant, rows in results.items():
        good = [r for r in rows if r["ok"]]
        s: dict[str, Any] = {"runs": len(rows), "failed": len(rows) - len(good)}
        for step in (*STEPS, "offer", "glb", "wall_ms"):
            xs = [float(r[step]) for r in good if r.get(step) is not None]
            if xs:
                s[step] = {"p50": _pct(xs, 50), "p95": _pct(xs, 95), "max": max(xs)}
        summary[variant] = s
    return summary


def report(summary: dict[str, dict[str, Any]], info: dict[str, Any], runs: int) -> None:
    print(f"page load (fresh context) -> first video frame, {runs} runs per variant, alternating; "
          f"3D model GLB {info['glb_bytes'] / 1e6:.2f} MB ({info['model']})")  # fmt: skip
    print("  step (ms since navigation start)   " + "".join(f"{v:>22s}" for v in VARIANTS))
    for step in ("fetched", "config", "offer", "ice", "frame", "3d", "3d_render", "glb", "wall_ms"):
        cells = []
        for v in VARIANTS:
            st = summary[v].get(step)
            cells.append(f"{st['p50']:7.0f} / {st['p95']:7.0f}" if st else f"{'-':>17s}")
        label = {
            "wall_ms": "goto -> frame seen (Python)",
            "glb": "model.glb fetched",
            "offer": "offer answered",
            "ice": "ICE connected",
            "3d": "3D model loaded",
            "3d_render": "3D view drawn",
            "fetched": "HTML fetched",
            "config": "config answered",
            "frame": "first video frame",
        }.get(step, step)
        print(f"  {label:33s}" + "".join(f"{c:>22s}" for c in cells) + "   (p50 / p95)")
    for v in VARIANTS:
        fr = summary[v].get("frame")
        if fr is None:
            print(f"  {v}: no run reached a video frame ({summary[v]['failed']} failed)")
            continue
        met = fr["p50"] <= GOAL_S * 1000 and fr["p95"] <= GOAL_S * 1000
        print(f"  {v:11s}: first frame p50 {fr['p50'] / 1000:.2f} s, p95 {fr['p95'] / 1000:.2f} s, max "
              f"{fr['max'] / 1000:.2f} s, failed runs {summary[v]['failed']}; goal p50 and p95 <= {GOAL_S} s: "
              f"{'met' if met else 'NOT met'}")  # fmt: skip
    a, b = summary[VARIANTS[0]].get("frame"), summary[VARIANTS[1]].get("frame")
    if a and b:
        print(
            f"  3D view's cost to the first frame: p50 {a['p50'] - b['p50']:+.0f} ms, p95 {a['p95'] - b['p95']:+.0f} ms"
        )
    d3 = summary[VARIANTS[0]].get("3d_render")
    if d3:
        print(f"  3D view drawn: p50 {d3['p50'] / 1000:.2f} s, p95 {d3['p95'] / 1000:.2f} s after navigation start")


def plot(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    colours = {VARIANTS[0]: "tab:blue", VARIANTS[1]: "tab:orange"}
    for v, rows in results.items():
        xs = np.sort([r["frame"] / 1000 for r in rows if r["ok"]])
        if len(xs):
            ax.plot(xs, np.linspace(0, 1, len(xs)), "o-", ms=3, color=colours[v], label=f"first frame, {v}")
        if v == VARIANTS[0]:
            ys = np.sort([r["3d_render"] / 1000 for r in rows if r["ok"] and r["3d_render"] is not None])
            if len(ys):
                ax.plot(ys, np.linspace(0, 1, len(ys)), "s--", ms=3, color="tab:green", label="3D view drawn")
    ax.axvline(GOAL_S, color="k", ls="--", lw=0.8)
    ax.text(GOAL_S, 0.02, " goal", fontsize=8)
    ax.set_xlabel("seconds since navigation start")
    ax.set_ylabel("fraction of page loads")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    # Split: median time of each step, per variant.
    steps = ("fetched", "config", "ice", "frame", "3d", "3d_render")
    for k, (v, rows) in enumerate(results.items()):
        good = [r for r in rows if r["ok"]]
        med = [
            np.median([r[s] for r in good if r.get(s) is not None]) if any(r.get(s) is not None for r in good) else 0
            for s in steps
        ]
        bx.barh(np.arange(len(steps)) + (0.2 if k else -0.2), med, height=0.4, color=colours[v], label=v)
    bx.set_yticks(
        np.arange(len(steps)),
        ["HTML fetched", "config answered", "ICE connected", "first frame", "3D loaded", "3D drawn"],
    )
    bx.invert_yaxis()
    bx.set_xlabel("median ms since navigation start")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"  plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="page loads per variant")
    ap.add_argument("--model", choices=("sphere", "phantom"), default="sphere")
    ap.add_argument("--budget", type=int, default=200_000, help="phantom triangles")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds a load may take before it counts as failed")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.model, args.budget)
        return
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    cmd = [sys.executable, __file__, "--serve", "--model", args.model, "--budget", str(args.budget)]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        info = json.loads(child.stdout.readline()) | {"model": args.model}
        results = run_loads(info.pop("url"), args.runs, args.timeout)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    summary = summarise(results)
    report(summary, info, args.runs)
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "mentor_pageload" if args.model == "sphere" else "mentor_pageload_phantom"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"info": info, "summary": summary, "runs": results}, indent=1))
    title = f"Mentor page load, fresh context, {args.runs} runs each ({args.model} model)"
    plot(results, RESULTS / f"{stem}.png", title)


if __name__ == "__main__":
    main()
