"""Child of tests/test_reliability_mentor_network.py, run inside ``unshare -n``: the mentor
server and a headless Chromium on the namespace's loopback only, then nftables drops a share
of every packet. Prints one JSON line: the page's link grade before and under loss, and
whether marks placed under loss were all acknowledged (once each) and published once; with
``--auto-quality``, whether the page's automatic video level went low (0 % loss: stayed high)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mentor_fixtures import SESSION, FramePump, Published, chromium_page, make_scene, serve, stop  # noqa: E402


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def drop(percent: int) -> None:
    """Drop ``percent`` % of all packets on input (loopback included): both directions lose."""
    rules = f"add table inet loss\nadd chain inet loss input {{ type filter hook input priority 0; }}\n" \
            f"add rule inet loss input numgen random mod 100 < {percent} counter drop\n"  # fmt: skip
    subprocess.run(["nft", "-f", "-"], input=rules, check=True, capture_output=True, text=True)


def dropped_packets() -> int:
    out = subprocess.run(["nft", "list", "table", "inet", "loss"], capture_output=True, text=True).stdout
    words = out.split()
    return int(words[words.index("packets") + 1]) if "packets" in words else 0


def grade(page: Any) -> str:
    return str(page.evaluate("mentor.linkGrade || (mentor.link || '-').split(' ')[0]"))


def wait_grade(page: Any, wanted: set[str], timeout_s: float) -> tuple[str, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        g = grade(page)
        seen.append(g)
        if g in wanted:
            return g, seen
        page.wait_for_timeout(250)  # the page grades its link once a second (getStats)
    return grade(page), seen


ME = "mentor.participants.find((p) => p.id === mentor.participant)"  # the server's view of the page


def auto_quality(drop_percent: int) -> dict[str, Any]:
    """Inside the namespace: the page on auto quality, then ``drop_percent`` % loss (0: none)
    for as long as auto takes to switch, or 10 link grades without loss. Returns the report."""
    scene = make_scene()
    served = serve(scene, Path(tempfile.mkdtemp(prefix="mentor-auto-quality-")), Published())
    levels = f"[mentor.autoQuality, mentor.quality, {ME}.quality]"  # auto?, the page's level, the server's
    r: dict[str, Any] = {"drop": drop_percent}
    try:
        with FramePump(served.room, scene), chromium_page() as page:
            page.goto(served.server.url_for(SESSION, served.token()))
            page.wait_for_function("window.mentor && window.mentor.conn === 'connected'", timeout=30_000)
            page.wait_for_function(f"mentor.frames > 5 && mentor.frameWidth > 0 && {ME}", timeout=30_000)
            r["before"], _ = wait_grade(page, {"good"}, 10.0)
            r["select"] = page.input_value("#quality")
            r["levels_before"] = page.evaluate(levels)
            r["frame_width_before"] = page.evaluate("mentor.frameWidth")
            graded = page.evaluate("mentor.linkGrades.length")
            if drop_percent:
                drop(drop_percent)
                dropped_at_ms = time.time() * 1000  # the page's Date.now() reads the same clock
                page.wait_for_function(f"{ME}.quality === 'low'", timeout=40_000)  # broadcast by the server
                r["switch_after_s"] = (page.evaluate("mentor.qualityLog[0].at") - dropped_at_ms) / 1000
                page.wait_for_function("mentor.frameWidth === 320", timeout=30_000)  # low frames decode
                r["dropped_packets"] = dropped_packets()
            else:  # control: longer than either rule's window, and nothing switches
                page.wait_for_function(f"mentor.linkGrades.length >= {graded + 10}", timeout=30_000)
            r["grades"] = page.evaluate(f"mentor.linkGrades.slice({graded})")
            r["conn"] = page.evaluate("mentor.conn")
            r["levels_after"] = page.evaluate(levels)
            r["frame_width_after"] = page.evaluate("mentor.frameWidth")
            r["auto_label"] = page.text_content("#quality option[value=auto]")
            r["quality_log"] = page.evaluate("mentor.qualityLog.map((e) => [e.level, e.auto, e.why])")
            hub = served.server.hubs[SESSION]
            r["server_levels"] = served.server.call(lambda: sorted(p.quality for p in hub.peers))
    finally:
        stop(served)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drop", type=int, required=True)
    ap.add_argument("--marks", type=int, default=5)
    ap.add_argument("--auto-quality", action="store_true", help="the automatic video level under loss")
    args = ap.parse_args()
    _sh("ip", "link", "set", "lo", "up")
    # aioice leaves loopback addresses out of its ICE candidates: give the namespace one more
    # address on lo (no dummy interfaces in this kernel); traffic to it never leaves the namespace.
    _sh("ip", "addr", "add", "10.213.0.1/32", "dev", "lo")
    if args.auto_quality:
        print(json.dumps(auto_quality(args.drop)))
        return
    scene, published = make_scene(), Published()
    served = serve(scene, Path(tempfile.mkdtemp(prefix="mentor-netns-")), published)
    report: dict[str, Any] = {"drop": args.drop}
    try:
        with FramePump(served.room, scene), chromium_page() as page:
            page.goto(served.server.url_for(SESSION, served.token()))
            page.wait_for_function("window.mentor && window.mentor.conn === 'connected'", timeout=30_000)
            page.wait_for_function("mentor.frames > 5", timeout=30_000)
            report["before"], _ = wait_grade(page, {"good"}, 10.0)
            drop(args.drop)
            report["under_loss"], report["grades_seen"] = wait_grade(page, {"fair", "poor"}, 20.0)
            report["conn_under_loss"] = page.evaluate("mentor.conn")
            for i in range(args.marks):
                pt = page.evaluate(f"mentor.screenPoint({300 + 4 * i}, 200)")
                page.mouse.click(pt["x"], pt["y"])
            # A lost ack makes the page re-send; the server answers the re-send with the same
            # ack (applied once), so the page may hear an ack twice: count distinct marks.
            distinct = "new Set(mentor.acks.map((a) => a.id)).size"
            page.wait_for_function(f"{distinct} >= {args.marks}", timeout=30_000)
            report["acked_ids"] = sorted({a["id"] for a in page.evaluate("mentor.acks")})
            report["acks_heard"] = page.evaluate("mentor.acks.length")
            report["ack_reasons"] = page.evaluate("mentor.acks.map((a) => [a.id, a.anchored, a.reason, a.error])")
            report["dropped_packets"] = dropped_packets()
    finally:
        stop(served)
    report["published_ids"] = [getattr(a, "id", a) for op, a in published.ops if op == "add"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
