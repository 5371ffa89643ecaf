"""Packet loss between the mentor page and the server (issue 7, faults): in a network
namespace the test creates itself, a headless Chromium and the mentor server talk over the
namespace's own addresses while nftables drops 10% or 30% of all packets. The page's link
indicator leaves "good", the connection holds, and every mark placed under loss is
acknowledged and published exactly once.

Needs root, ``unshare``, ``ip``, ``nft`` and the system Chromium; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mentor_fixtures import CHROMIUM
from test_reliability_network import _namespace_skip_reason

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "reliability_mentor_child.py"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(_namespace_skip_reason() is not None, reason=str(_namespace_skip_reason())),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"system Chromium not found at {CHROMIUM}"),
]


def _run(drop_percent: int, *mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    cmd = ["unshare", "-n", sys.executable, str(CHILD), "--drop", str(drop_percent), *mode]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("drop_percent", [10, 30])
def test_page_shows_a_degraded_link_and_loses_no_mark(drop_percent: int) -> None:
    r = _run(drop_percent)
    assert r["before"] == "good", r  # the indicator is not simply always degraded
    assert r["dropped_packets"] > 0, r  # the rule really dropped traffic
    assert r["under_loss"] in ("fair", "poor"), r
    assert r["conn_under_loss"] == "connected", r
    assert len(r["acked_ids"]) == 5, r  # every mark acknowledged (an ack may be heard twice after a re-send)
    # Each mark anchored in 3D reaches the headsets exactly once; a mark whose clicked frame
    # the server no longer knows (a video frozen by loss for longer than its frame memory)
    # stays 2D on the page, says why, and is never published (seen once in CI at 30 % loss).
    anchored = sorted({i for i, ok, _, _ in r["ack_reasons"] if ok})
    assert anchored, r
    assert sorted(r["published_ids"]) == anchored, r
    assert all(why for i, ok, why, _ in r["ack_reasons"] if not ok), r


# -- automatic video quality: high, low on a weak link (issue: "a lower quality level for weak links")
@pytest.mark.parametrize("drop_percent", [0, 10, 30])
def test_auto_quality_goes_low_under_loss_and_stays_high_without(drop_percent: int) -> None:
    r = _run(drop_percent, "--auto-quality")
    # Auto is the default; the offer asked the server for a real level, high.
    assert r["select"] == "auto" and r["before"] == "good", r
    assert r["levels_before"] == [True, "high", "high"] and r["frame_width_before"] == 640, r
    assert r["conn"] == "connected", r
    if drop_percent == 0:  # the control: ten graded seconds on a clean link, still high
        assert len(r["grades"]) >= 10, r
        assert r["levels_after"] == [True, "high", "high"] and r["server_levels"] == ["high"], r
        assert r["quality_log"] == [] and r["frame_width_after"] == 640, r
        assert r["auto_label"] == "Auto (high, low on a weak link)", r
        return
    assert r["dropped_packets"] > 0, r  # the rule really dropped traffic
    # One automatic switch, to low (never to annotation-only), seen by the server ...
    assert r["quality_log"] == [["low", True, "weak link"]], r
    assert r["levels_after"] == [True, "low", "low"] and r["server_levels"] == ["low"], r
    assert r["frame_width_after"] == 320, r  # ... whose low-level frames reach the page
    assert r["auto_label"] == "Auto: low now (weak link)", r
    # Not on the first weak second: 3 poor (or 5 fair/poor) grades, one a second, came first.
    assert r["switch_after_s"] >= 1.5, r
    assert len([g for g in r["grades"] if g != "good"]) >= 3, r
