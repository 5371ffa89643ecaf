"""Network loss between the bridge and a headset (issue 7, faults): in a network namespace the
test creates itself, nftables drops 10% and 30% of all packets on the input hook while poses
and annotation ops stream. Every annotation arrives once and in order, poses keep flowing,
and the headset's link monitor reports the link as degraded.

Needs root, ``unshare``, ``ip`` and ``nft`` (Debian: ``apt-get install nftables``); skipped
with the reason otherwise. ``tc netem`` is not available in this kernel, hence nftables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from headset_bridge.client import DEGRADED_TCP_REPAIR_SHARE, DEGRADED_TCP_REPAIRS

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "reliability_bridge_child.py"
SECONDS = 2.5  # of streaming per drop rate: 150 poses at 60 Hz, 125 annotation ops at 50 Hz


def _namespace_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (unshare -n) and load nftables rules"
    missing = [tool for tool in ("unshare", "ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian: apt-get install nftables iproute2 util-linux)"
    probe = subprocess.run(["unshare", "-n", "nft", "list", "ruleset"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace with nftables here: {probe.stderr.strip()[:200]}"
    return None


pytestmark = pytest.mark.skipif(_namespace_skip_reason() is not None, reason=str(_namespace_skip_reason()))


def _run_lossy(drop_percent: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = ["unshare", "-n", sys.executable, str(CHILD), "lossy", "--drop", str(drop_percent), "--seconds", str(SECONDS)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("drop_percent", [10, 30])
def test_annotations_all_arrive_and_link_shows_degraded(drop_percent: int) -> None:
    r = _run_lossy(drop_percent)
    assert r["ready"], r
    assert r["dropped_packets"] > 0  # the rule really dropped traffic
    assert r["converged"] and r["client_seq"] == r["server_seq"], r
    applied = r["applied"]
    assert applied == list(range(applied[0], r["server_seq"] + 1))  # each op once, in order, none missing
    assert applied[0] == 1  # the headset synced before the first op: it applied every op itself
    assert r["digest_equal"]
    # Poses keep flowing: the newest one reaches the headset. Not a share within the 2.5 s
    # window: TCP's backed-off retransmission timeouts under 30 % loss stalled it for over
    # 1.5 s in 2 of 16 runs of the session-2 server and 3 of 14 of the current one.
    assert r["pose_caught_up"], r
    # The headset shows the link is not good: "degraded", or "lost" when one of those
    # backed-off stalls silences it for over 1 s (seen once under 30 %: good 10, lost 15).
    # Not from delays alone: TCP repaired every loss of one 10 % run within 16 ms (all 25
    # looks "good" before the kernel's repair counts were read; CI, 2026-11-23).
    assert r["statuses"].get("degraded", 0) + r["statuses"].get("lost", 0) > 0, r["statuses"]
    link = r["link"]
    assert link["tcp_repairs"] >= max(DEGRADED_TCP_REPAIRS, DEGRADED_TCP_REPAIR_SHARE * link["tcp_segments"]), link


def test_control_without_loss_shows_a_good_link() -> None:
    r = _run_lossy(0)
    assert r["dropped_packets"] == 0
    assert r["converged"] and r["digest_equal"]
    assert r["poses_received"] == r["published"]
    assert r["statuses"].get("good", 0) > 0, r["statuses"]
    assert r["link"]["tcp_repairs"] == 0, r["link"]  # the kernel saw no loss to repair
