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


def _run(drop_percent: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    cmd = ["unshare", "-n", sys.executable, str(CHILD), "--drop", str(drop_percent)]
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
    assert sorted(r["published_ids"]) == r["acked_ids"], r  # ... and published exactly once
