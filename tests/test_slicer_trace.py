"""slicer_link: a ``SurfaceTrace`` point list from Slicer (pyigtl's client as the real
peer) with the landmark lists sent before it, and the verdict sent back as text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyigtl
import pytest
from slicer_fixtures import Peer, wait_for

from scrubin.audit import AuditEvent, AuditLog, audit_path, read_events
from slicer_link import SlicerLink, SlicerLinkConfig
from slicer_link.convert import TraceList

FLIP = np.array([-1.0, -1.0, 1.0])  # LPS <-> RAS for model-side points
TRACE = np.array([[10.0 + i, -40.0 + 0.5 * i, 380.0 - 0.25 * i] for i in range(400)])
NAMES = ["nasion", "left_canthus", "right_canthus"]
SENSOR = np.array([[0.0, -20.0, 400.0], [30.0, -10.0, 410.0], [-30.0, -10.0, 410.0]])
MODEL_LPS = np.array([[0.0, -95.0, 10.0], [35.0, -85.0, 20.0], [-35.0, -85.0, 20.0]])


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[SlicerLink, list[TraceList]]]:
    traces: list[TraceList] = []
    cfg = SlicerLinkConfig(enabled=True, port=0, accept_landmarks=True, max_incoming_bytes=136 * 500)
    made = SlicerLink(cfg, AuditLog(audit_path(tmp_path, "s")), on_trace=traces.append)
    made.start()
    yield made, traces
    made.stop()


@pytest.fixture
def peer(link: tuple[SlicerLink, list[TraceList]]) -> Iterator[Peer]:
    p = Peer(link[0].port)
    yield p
    p.stop()


def _points(device: str, positions: Any, names: list[str] | None = None) -> Any:
    return pyigtl.PointMessage(positions=positions, names=names, device_name=device)


def _events(link: SlicerLink, action: str) -> list[AuditEvent]:
    return [e for e in read_events(link.audit.path) if e.action == action]


def test_a_trace_comes_with_the_landmark_lists_sent_before_it_once(
    link: tuple[SlicerLink, list[TraceList]], peer: Peer
) -> None:
    slicer, traces = link
    peer.send(_points("LandmarksModel", MODEL_LPS * FLIP, NAMES))  # placed on the model in Slicer's RAS scene
    peer.send(_points("LandmarksSensor", SENSOR, NAMES))
    peer.send(_points("SurfaceTrace", TRACE))
    peer.send(_points("SurfaceTrace", TRACE[:50]))  # a second trace: the sensor landmarks were used
    wait_for(lambda: len(traces) == 2, "both traces")
    first, second = traces
    np.testing.assert_allclose(first.points_mm, TRACE, atol=1e-4)  # sensor frame: never flipped (float32 wire)
    assert first.sensor is not None and first.sensor.names == tuple(NAMES)
    np.testing.assert_allclose(first.sensor.points_mm, SENSOR, atol=1e-4)
    assert first.model is not None and np.allclose(first.model.points_mm, MODEL_LPS, atol=1e-4)
    assert second.sensor is None and second.model is first.model and len(second.points_mm) == 50
    audited = _events(slicer, "slicer.trace")
    assert [(e.detail["n_points"], e.detail["landmarks"]) for e in audited] == [(400, NAMES), (50, [])]
    assert all("points_mm" not in e.detail for e in audited)  # a count, never the coordinates


@pytest.mark.parametrize(
    ("positions", "reason"),
    [
        (np.where(np.arange(30).reshape(10, 3) == 7, np.nan, 1.0), "trace positions must be finite mm within 100000"),
        (np.ones((499, 3)) * 2e5, "got point 0 = [200000.0, 200000.0, 200000.0]"),
        (np.zeros((501, 3)), "exceeds the 68000-byte limit"),  # over the link's message limit: 500 points
    ],
)
def test_a_bad_trace_is_refused_naming_the_problem(
    link: tuple[SlicerLink, list[TraceList]], peer: Peer, positions: Any, reason: str
) -> None:
    slicer, traces = link
    assert slicer.max_trace_points == 500
    peer.send(_points("SurfaceTrace", positions))
    (refused,) = wait_for(lambda: _events(slicer, "slicer.trace"), "the refusal")
    assert refused.detail["accepted"] is False and reason in refused.detail["reason"]
    assert traces == []


def test_the_verdict_reaches_slicer_as_text_also_for_a_late_client(
    link: tuple[SlicerLink, list[TraceList]], peer: Peer
) -> None:
    slicer, _ = link
    slicer.publish_verdict("accepted (landmarks + trace): residual 0.51 mm RMS \u2014 fine")
    said = peer.inbox.wait(lambda m: m.device_name == "RegistrationVerdict", "the verdict")
    assert said.string == "accepted (landmarks + trace): residual 0.51 mm RMS ? fine"  # ASCII on the wire
    late = Peer(slicer.port)
    try:
        late.inbox.wait(lambda m: m.device_name == "RegistrationVerdict", "the verdict, for a new client")
    finally:
        late.stop()
