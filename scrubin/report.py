"""The demo's figures: joined per frame from the server's records and the headset's
events, shown live and written as a report folder (``report.md``, ``metrics.json``, PNG
plots and the headset's overlay snapshots).

Hops, all on the server clock (headset times are mapped with the bridge's clock sync):

* ``capture``      headset capture -> the frame arrives at the server (uplink)
* ``queue``        arrived -> the registration loop takes it
* ``registration`` taken -> pose sent (depth conversion, tracking; the pose's send stamp)
* ``bridge``       pose sent -> received by the headset
* ``in_to_pose``   arrived at the server -> received by the headset: depth frame in to pose at the headset
* ``total``        headset capture -> pose received by the headset (end to end)

Accuracy is judged against the simulator's ground truth at the deep target. TRE figures
are over frames reported as ``tracking`` (the ones a surgeon may rely on); the share of
tracking frames is counted from the first lock (acquisition time is its own figure) and
over the whole run.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from scrubin.session import FrameRecord

F64 = npt.NDArray[np.float64]
HOPS = ("capture", "queue", "registration", "bridge", "in_to_pose", "total")
GOAL_TOTAL_P95_MS = 12.0
GOAL_TRACKING_SHARE = 0.95
GOAL_TRE_P95_MM = 1.0
GOAL_DEPTH_FPS = 40.0  # frames/s sent by the headset and registered by the server (AHAT: 45)
SENT_RATE_WINDOW_NS = 2_000_000_000  # the live sent rate: over the last 2 s
TRE_LIMIT_MM = 3.0
STATUS_COLOURS = {"tracking": "#2ca02c", "degraded": "#ff7f0e", "lost": "#d62728"}


# ------------------------------------------------------------------ headset feed
class Feed:
    """Thread-safe collector of the simulated headset's JSON-lines events."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error = ""
        self.truth: dict[int, F64] = {}  # frame seq -> ground-truth T_sensor_model
        self.rx: dict[int, tuple[int, int]] = {}  # pose seq -> (t_recv, t_send), server clock
        self.views: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.snapshots: list[str] = []
        self.summary: dict[str, Any] = {}
        self.sent_at: deque[int] = deque(maxlen=512)  # headset capture (= send) times, its clock
        self.loop: dict[str, Any] = {}  # the headset's rendered loop: cached, or rendered how far
        self._lock = threading.Lock()

    def read(self, stream: IO[str] | None) -> None:
        try:
            for line in stream or ():
                self.take(line)
        finally:
            self.done.set()

    def take(self, line: str) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            return  # not ours (a library printing to stdout)
        kind = ev.get("e")
        with self._lock:
            if kind == "frame":
                self.truth[int(ev["seq"])] = np.asarray(ev["T"], dtype=np.float64).reshape(4, 4)
                self.sent_at.append(int(ev["t_cap"]))
            elif kind == "rx":
                self.rx[int(ev["pose"])] = (int(ev["t_recv"]), int(ev["t_send"]))
            elif kind == "view":
                self.views.append(ev)
            elif kind == "ann":
                self.annotations.append(ev)
            elif kind == "snapshot":
                self.snapshots.append(str(ev["path"]))
            elif kind == "loop":
                self.loop = ev
            elif kind == "summary":
                self.summary = ev
            elif kind == "error":
                self.error = str(ev.get("message"))
        if kind == "ready":
            self.ready.set()

    def copy(self) -> tuple[dict[int, F64], dict[int, tuple[int, int]]]:
        with self._lock:
            return dict(self.truth), dict(self.rx)

    def sent_fps(self) -> float:
        """Depth frames/s the headset sent over its last ``SENT_RATE_WINDOW_NS``."""
        with self._lock:
            times = list(self.sent_at)
        recent = [t for t in times if times and t > times[-1] - SENT_RATE_WINDOW_NS]
        return rate_per_s(recent)

    def loop_note(self) -> str:
        """While the headset still renders its loop (first run): how far, else ''."""
        with self._lock:
            done, total = self.loop.get("done"), self.loop.get("total")
        return f"rendering loop {done}/{total}" if done is not None and done != total else ""


def rate_per_s(times_ns: Sequence[int]) -> float:
    """Events per second from their times: intervals over the span (0 below two events)."""
    if len(times_ns) < 2 or times_ns[-1] <= times_ns[0]:
        return 0.0
    return (len(times_ns) - 1) / ((times_ns[-1] - times_ns[0]) / 1e9)


# ------------------------------------------------------------------ joined rows
@dataclass(frozen=True)
class Rows:
    """One entry per registered frame, in order."""

    t_s: F64  # capture time since the first frame
    status: list[str]
    tre_mm: F64  # NaN where the ground truth is unknown
    hops_ms: dict[str, F64]  # NaN where the headset's receipt is unknown
    skipped: int
    steady: npt.NDArray[np.bool_]  # neither a (re-)initialisation frame nor the one right after
    tracker_ms: F64


def join(records: Sequence[FrameRecord], truth: dict[int, F64], rx: dict[int, tuple[int, int]], target: F64) -> Rows:
    n = len(records)
    t0 = records[0].t_capture_ns if n else 0
    tre = np.full(n, np.nan)
    hops = {h: np.full(n, np.nan) for h in HOPS}
    x = np.append(target, 1.0)
    for i, r in enumerate(records):
        T_true = truth.get(r.frame_seq)
        if T_true is not None:
            tre[i] = float(np.linalg.norm((r.T_sensor_model @ x - T_true @ x)[:3]))
        hops["capture"][i] = (r.t_received_ns - r.t_capture_ns) / 1e6
        hops["queue"][i] = (r.t_taken_ns - r.t_received_ns) / 1e6
        hops["registration"][i] = (r.t_published_ns - r.t_taken_ns) / 1e6
        got = rx.get(r.pose_seq)
        if got is not None:
            t_recv, t_send = got
            # The pose's own send stamp: the loop's clock read after publishing can be late
            # by a GIL hand-over, so registration + bridge = in_to_pose exactly.
            hops["registration"][i] = (t_send - r.t_taken_ns) / 1e6
            hops["bridge"][i] = (t_recv - t_send) / 1e6
            hops["in_to_pose"][i] = (t_recv - r.t_received_ns) / 1e6
            hops["total"][i] = (t_recv - r.t_capture_ns) / 1e6
    t_s = np.array([(r.t_capture_ns - t0) / 1e9 for r in records])
    # (Re-)initialisation frames wait for a global search, and the frame queued behind each
    # waited for it: both are start-up, not the tracking loop's steady state.
    events = [bool(r.event) for r in records]
    steady = np.array([not e and not (i and events[i - 1]) for i, e in enumerate(events)], dtype=bool)
    tracker = np.array([r.tracker_ms for r in records], dtype=np.float64)
    return Rows(t_s, [r.status for r in records], tre, hops, sum(r.skipped for r in records), steady, tracker)


def _span_rate(t_s: F64, count: int) -> float:
    span = float(t_s[-1] - t_s[0]) if len(t_s) > 1 else 0.0
    return max(count - 1, 0) / span if span > 0 else 0.0


def _pct(values: F64, q: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.percentile(v, q)) if len(v) else float("nan")


# ------------------------------------------------------------------ result
@dataclass
class DemoResult:
    rows: Rows
    metrics: dict[str, Any]
    snapshots: list[str] = field(default_factory=list)


def figures(rows: Rows, duration_s: float) -> dict[str, Any]:
    status = np.array(rows.status)
    n = len(status)
    tracking = status == "tracking"
    first = int(np.argmax(tracking)) if tracking.any() else n
    after = tracking[first:]
    tre_tracking = rows.tre_mm[tracking]
    out: dict[str, Any] = {
        "frames_registered": n,
        "frames_skipped": rows.skipped,
        "fps": n / duration_s if duration_s > 0 else 0.0,
        # Over the registered frames' own capture times: start-up and shut-down left out.
        "registered_fps": _span_rate(rows.t_s, n),
        "tracking_fps": _span_rate(rows.t_s, int(tracking.sum())),
        "duration_s": duration_s,
        "acquisition_s": float(rows.t_s[first]) if first < n else None,
        "tracking_share_after_lock": float(after.mean()) if len(after) else 0.0,
        "tracking_share_all": float(tracking.mean()) if n else 0.0,
        "tre_tracking_p50_mm": _pct(tre_tracking, 50),
        "tre_tracking_p95_mm": _pct(tre_tracking, 95),
        "tre_tracking_max_mm": float(np.nanmax(tre_tracking)) if np.isfinite(tre_tracking).any() else None,
        "tracking_frames_over_3mm": int(np.sum(tre_tracking > TRE_LIMIT_MM)),
        "tracking_frames_without_truth": int(np.sum(~np.isfinite(tre_tracking))),
    }
    out["startup_frames"] = int(n - np.sum(rows.steady))
    for hop, values in rows.hops_ms.items():
        v = values[rows.steady]
        out[f"{hop}_p50_ms"] = _pct(v, 50)
        out[f"{hop}_p95_ms"] = _pct(v, 95)
        out[f"{hop}_samples"] = int(np.isfinite(v).sum())
    out["tracker_p50_ms"] = _pct(rows.tracker_ms[rows.steady], 50)
    out["tracker_p95_ms"] = _pct(rows.tracker_ms[rows.steady], 95)
    return out


def assemble(
    records: Sequence[FrameRecord], feed: Feed, mark: dict[str, Any], *, duration_s: float, target: F64
) -> DemoResult:
    truth, rx = feed.copy()
    rows = join(records, truth, rx, target)
    m = figures(rows, duration_s)
    summary = feed.summary
    m["headset_frames_sent"] = summary.get("sent")
    m["headset_shown_tracking_over_3mm"] = summary.get("shown_tracking_over_3mm")
    m["headset_views"] = summary.get("views")
    m["headset_rate_hz"] = summary.get("rate_hz")
    m["headset_sent_fps"] = summary.get("achieved_hz")
    m["headset_slots_skipped"] = summary.get("slots_skipped")
    m["annotation"] = _annotation(mark, feed.annotations)
    m["goals"] = {
        "total_p95_ms<=12": _ok(m["total_p95_ms"] <= GOAL_TOTAL_P95_MS),
        "in_to_pose_p95_ms<=12": _ok(m["in_to_pose_p95_ms"] <= GOAL_TOTAL_P95_MS),
        "tracking_share_after_lock>=0.95": _ok(m["tracking_share_after_lock"] >= GOAL_TRACKING_SHARE),
        "tre_tracking_p95_mm<=1": _ok(m["tre_tracking_p95_mm"] <= GOAL_TRE_P95_MM),
        "no_tracking_frame_over_3mm": _ok(
            m["tracking_frames_over_3mm"] == 0 and not m["headset_shown_tracking_over_3mm"]
        ),
        "depth_fps_sent_and_registered>=40": _ok(
            min(m["headset_sent_fps"] or 0.0, m["registered_fps"]) >= GOAL_DEPTH_FPS
        ),
    }
    return DemoResult(rows, m, list(feed.snapshots))


def _ok(flag: Any) -> str:
    return "met" if bool(flag) else "NOT met"


def _annotation(mark: dict[str, Any], arrived: list[dict[str, Any]]) -> dict[str, Any]:
    if not mark:
        return {"sent": False, "reached_headset": False}
    hit = next((a for a in arrived if a.get("id") == mark["id"] and a.get("op") == "add"), None)
    out = {
        "sent": True,
        "id": mark["id"],
        "via": mark.get("via", ""),
        "point_mm": mark["point_mm"],
        "reached_headset": hit is not None,
    }
    if hit is not None:
        out["points_at_headset_mm"] = hit["points"]
    return out


# ------------------------------------------------------------------ live view
@dataclass(frozen=True)
class LiveSummary:
    elapsed_s: float
    status: str
    fps: float  # registered by the server
    skipped: int
    tre_last_mm: float
    tre_p95_mm: float
    hops: dict[str, tuple[float, float]]  # p50, p95
    sent_fps: float = 0.0  # depth frames/s sent by the headset
    note: str = ""  # e.g. the headset's loop still being rendered

    def line(self) -> str:
        tot = self.hops.get("total", (float("nan"),) * 2)
        reg = self.hops.get("registration", (float("nan"),) * 2)
        return (
            f"t={self.elapsed_s:5.1f}s {self.status:<9} depth {self.sent_fps:4.1f}/s sent {self.fps:4.1f}/s registered  TRE {self.tre_last_mm:5.2f} mm "
            f"(p95 {self.tre_p95_mm:.2f})  registration p50/p95 {reg[0]:.1f}/{reg[1]:.1f} ms  "
            f"total p50/p95 {tot[0]:.1f}/{tot[1]:.1f} ms  skipped {self.skipped}"
            + (f"  {self.note}" if self.note else "")
        )

    def table(self) -> Any:
        from rich.table import Table

        colour = {"tracking": "green", "degraded": "yellow"}.get(self.status, "red")
        t = Table(title=f"scrubin demo  {self.elapsed_s:5.1f} s  [{colour}]{self.status.upper()}[/]", min_width=60)
        t.add_column("hop")
        t.add_column("p50 ms", justify="right")
        t.add_column("p95 ms", justify="right")
        for hop, (p50, p95) in self.hops.items():
            t.add_row(hop, f"{p50:.2f}", f"{p95:.2f}")
        t.add_section()
        t.add_row("TRE deep target (mm)", f"{self.tre_last_mm:.2f}", f"{self.tre_p95_mm:.2f}")
        t.add_row("depth frames/s sent (headset)", f"{self.sent_fps:.1f}", "")
        t.add_row("frames/s registered, skipped", f"{self.fps:.1f}", str(self.skipped))
        if self.note:
            t.add_row(self.note, "", "")
        return t


def live_summary(
    recent: Sequence[FrameRecord], skipped: int, feed: Feed, elapsed_s: float, target: F64 | None
) -> LiveSummary:
    """Figures over the ``recent`` frames (a few hundred: cheap enough four times a second)."""
    truth, rx = feed.copy()
    rows = join(recent, truth, rx, target) if recent and target is not None else None
    if rows is None:
        nan = float("nan")
        return LiveSummary(elapsed_s, "waiting", 0.0, 0, nan, nan, {}, feed.sent_fps(), feed.loop_note())
    span = (recent[-1].t_capture_ns - recent[0].t_capture_ns) / 1e9
    tracking = np.array(rows.status) == "tracking"
    tre = rows.tre_mm
    return LiveSummary(
        elapsed_s=elapsed_s,
        status=rows.status[-1],
        fps=(len(recent) - 1) / span if span > 0 else 0.0,
        skipped=skipped,
        tre_last_mm=float(tre[np.isfinite(tre)][-1])
        if np.isfinite(tre).any()
        else float("nan"),  # truth can lag a frame
        tre_p95_mm=_pct(tre[tracking], 95),
        hops={h: (_pct(v[rows.steady], 50), _pct(v[rows.steady], 95)) for h, v in rows.hops_ms.items()},
        sent_fps=feed.sent_fps(),
        note=feed.loop_note(),
    )


# ------------------------------------------------------------------ report folder
def write_report(directory: Path, result: DemoResult, notes: Iterable[str] = ()) -> Path:
    """``report.md`` with its plots and snapshots, plus ``metrics.json``; returns the page."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True, default=_json))
    plots = [
        _plot_latency(directory / "latency_hist.png", result.rows),
        _plot_tre(directory / "tre_over_time.png", result.rows),
        _plot_status(directory / "status_timeline.png", result.rows),
    ]
    page = directory / "report.md"
    page.write_text(_markdown(result, plots, directory, list(notes)))
    return page


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _markdown(result: DemoResult, plots: list[Path], directory: Path, notes: list[str]) -> str:
    m = result.metrics
    lines = [
        "# scrubin demo report (SYNTHETIC phantom)",
        "",
        "Everything here comes from the built-in synthetic head phantom and a simulated headset;",
        "nothing is a patient and nothing here is a medical device.",
        "",
        "## Goals",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
        f"| depth frame in -> pose at headset, p95 <= 12 ms | {m['in_to_pose_p95_ms']:.2f} ms | {m['goals']['in_to_pose_p95_ms<=12']} |",
        f"| stricter reading, uplink included: headset capture -> pose at headset, p95 <= 12 ms | {m['total_p95_ms']:.2f} ms | {m['goals']['total_p95_ms<=12']} |",
        f"| tracking share from first lock >= 95 % | {100 * m['tracking_share_after_lock']:.1f} % | {m['goals']['tracking_share_after_lock>=0.95']} |",
        f"| TRE at the deep target (tracking frames) p95 <= 1 mm | {m['tre_tracking_p95_mm']:.3f} mm | {m['goals']['tre_tracking_p95_mm<=1']} |",
        f"| frames with TRE > 3 mm reported / shown as tracking: 0 | {m['tracking_frames_over_3mm']} / {m['headset_shown_tracking_over_3mm']} | {m['goals']['no_tracking_frame_over_3mm']} |",
        f"| depth frames sent by the headset / registered by the server >= 40 /s | {_num(m['headset_sent_fps'], '/s')} / {m['registered_fps']:.1f} /s | {m['goals']['depth_fps_sent_and_registered>=40']} |",
        "",
        "## Run",
        "",
        f"- duration {m['duration_s']:.1f} s; frames sent by the headset {m['headset_frames_sent']}, registered "
        f"{m['frames_registered']} ({m['fps']:.1f} /s), skipped as stale {m['frames_skipped']}",
        f"- depth rate: the headset sent {_num(m['headset_sent_fps'], 'frames/s')} (paced at "
        f"{_num(m['headset_rate_hz'], 'Hz')}, {m['headset_slots_skipped']} slot(s) missed); the server registered "
        f"{m['registered_fps']:.1f} frames/s, {m['tracking_fps']:.1f} /s of them tracking (over their capture times)",
        f"- acquisition (first frame to first tracking frame): {_num(m['acquisition_s'], 's')}; tracking share over "
        f"the whole run {100 * m['tracking_share_all']:.1f} %",
        f"- TRE at the deep target over tracking frames: p50 {m['tre_tracking_p50_mm']:.3f} mm, "
        f"max {_num(m['tre_tracking_max_mm'], 'mm')}",
        f"- annotation from the scripted mentor: {_annotation_line(m['annotation'])}",
        "",
        "## Latency per hop (ms)",
        "",
        "| hop | p50 | p95 | samples |",
        "|---|---|---|---|",
        *[f"| {h} | {m[f'{h}_p50_ms']:.2f} | {m[f'{h}_p95_ms']:.2f} | {m[f'{h}_samples']} |" for h in HOPS],
        "",
        "capture: headset capture to the frame arriving at the server (uplink); queue: arrived to taken by the "
        "registration loop; registration: taken to the pose leaving the server; bridge: sent to received at the "
        "headset; in_to_pose: arrived at the server to received at the headset; "
        f"total: capture to received. {m['startup_frames']} start-up frame(s) are left out: a frame that "
        "(re-)initialises the registration waits for a global search, and the frame queued behind it for both. "
        f"Inside the registration hop, Tracker.update took p50 {m['tracker_p50_ms']:.2f} / p95 "
        f"{m['tracker_p95_ms']:.2f} ms. Timings depend on what else runs on the machine.",
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.relative_to(directory)})" for p in plots],
        "",
        "## Overlay snapshots (as the headset shows them)",
        "",
        *[f"![{Path(s).stem}]({_rel(Path(s), directory)})" for s in result.snapshots],
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _num(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.3f} {unit}" if unit == "mm" else f"{value:.2f} {unit}"


def _rel(path: Path, directory: Path) -> str:
    try:
        return str(path.resolve().relative_to(directory.resolve()))
    except ValueError:
        return str(path)


def _annotation_line(a: dict[str, Any]) -> str:
    if not a.get("sent"):
        return "none sent (tracking never held long enough)"
    where = ", ".join(f"{c:.1f}" for c in a["point_mm"])
    reached = "yes" if a["reached_headset"] else "NO"
    return f"{a['id']} (placed via {a['via']}) at ({where}) mm in the model frame, reached the headset: {reached}"


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=size, dpi=100)


def _plot_latency(path: Path, rows: Rows) -> Path:
    plt, fig = _figure((10, 6))
    for i, hop in enumerate(HOPS):
        ax = fig.add_subplot(2, 3, i + 1)
        v = rows.hops_ms[hop][rows.steady]
        v = v[np.isfinite(v)]
        if len(v):
            ax.hist(v, bins=40, color="#1f77b4")
            ax.axvline(float(np.percentile(v, 95)), color="k", ls="--", lw=1, label="p95")
        if hop in ("total", "in_to_pose"):
            ax.axvline(GOAL_TOTAL_P95_MS, color="r", lw=1, label="goal")
        ax.set_title(hop)
        ax.set_xlabel("ms")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Latency per hop")
    return _save(plt, fig, path)


def _plot_tre(path: Path, rows: Rows) -> Path:
    plt, fig = _figure((10, 4))
    ax = fig.add_subplot(1, 1, 1)
    status = np.array(rows.status)
    for name, colour in STATUS_COLOURS.items():
        sel = status == name
        ax.scatter(rows.t_s[sel], np.maximum(rows.tre_mm[sel], 1e-3), s=6, c=colour, label=name)
    ax.axhline(GOAL_TRE_P95_MM, color="k", ls="--", lw=1, label="1 mm goal (p95)")
    ax.axhline(TRE_LIMIT_MM, color="r", ls=":", lw=1, label="3 mm limit")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("TRE at deep target (mm)")
    ax.legend(fontsize=7, loc="upper right")
    return _save(plt, fig, path)


def _plot_status(path: Path, rows: Rows) -> Path:
    plt, fig = _figure((10, 1.8))
    ax = fig.add_subplot(1, 1, 1)
    status = np.array(rows.status)
    for k, name in enumerate(STATUS_COLOURS):
        sel = status == name
        ax.scatter(rows.t_s[sel], np.full(int(sel.sum()), k), marker="|", s=80, c=STATUS_COLOURS[name])
    ax.set_yticks(range(len(STATUS_COLOURS)), list(STATUS_COLOURS))
    ax.set_ylim(-0.5, len(STATUS_COLOURS) - 0.5)
    ax.set_xlabel("time (s)")
    return _save(plt, fig, path)
