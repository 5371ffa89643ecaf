"""The mentor page in a real (headless, system) Chromium, against a real bridge and headset client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from bridge_fixtures import Bridge, make_bridge, ready, wait_all
from mentor_fixtures import (
    CAMERA,
    CHROMIUM,
    SESSION,
    FramePump,
    HeadsetPoller,
    Scene,
    Served,
    audit_events,
    chromium_page,
    click_video,
    make_scene,
    serve,
    stop,
)

from headset_bridge.client import HeadsetClient
from mentor.room import VoiceChunk

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"system Chromium not found at {CHROMIUM}"),
]


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture(scope="module")
def setup(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Bridge, HeadsetPoller]]:
    bridge = make_bridge()
    client = bridge.client("hl-a")
    assert wait_all([client], ready, 5.0)
    headset = HeadsetPoller(client)

    def voice(chunk: VoiceChunk) -> None:
        bridge.server.publish_audio(chunk.pcm, chunk.sample_rate, 1, chunk.speaker)

    served = serve(scene, tmp_path_factory.mktemp("mentor-browser"), bridge.server.annotate, voice)
    try:
        with FramePump(served.room, scene):
            yield served, bridge, headset
    finally:
        stop(served)
        headset.close()
        client.close()
        bridge.server.stop()


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with chromium_page() as p:
        yield p


def _open(page: Any, served: Served, token: str) -> None:
    page.goto("about:blank")  # a new document: only the fragment would differ otherwise
    page.goto(served.server.url_for(SESSION, token))
    page.wait_for_function("window.mentor && (window.mentor.conn === 'connected' || window.mentor.error)")


_click = click_video  # the one click helper, in mentor_fixtures


def test_mentor_sees_video_and_marks_land_on_the_model_at_the_headset(
    page: Any, setup: tuple[Served, Bridge, HeadsetPoller], scene: Scene
) -> None:
    served, _, headset = setup
    _open(page, served, served.token("mentor", "dr-m"))
    # Frames decode: the page reads pixels back through a canvas; the test frame's red
    # channel is a left-to-right ramp, so the right edge is much redder than the left.
    page.wait_for_function("mentor.frames > 5 && mentor.samplePixel(2, 240) !== null")
    left, right = page.evaluate("[mentor.samplePixel(20, 240), mentor.samplePixel(620, 240)]")
    assert right[0] - left[0] > 150, (left, right)
    assert page.is_enabled("#tools input[value=point]")

    u, v = 300.0, 200.0
    ack = _click(page, u, v)
    assert ack["ok"] and ack["anchored"], ack
    assert ack["t_capture_ns"] is not None  # the clicked frame was identified
    expected = scene.expected_hit(u, v)
    assert expected is not None
    got: dict[str, Any] = {}

    def arrived(c: HeadsetClient) -> bool:
        if ack["id"] in c.annotations.state:
            got["ann"] = c.annotations.state[ack["id"]]
        return "ann" in got

    assert headset.wait_for(arrived, 5.0)
    point = np.asarray(got["ann"].points_mm[0])
    assert np.linalg.norm(point - expected) < 2.0, (point, expected)
    assert got["ann"].author == "dr-m" and got["ann"].kind == "point"

    # The page draws the mark by re-projecting its model point with the latest status's
    # projection: on this still scene, back at the clicked pixel.
    page.wait_for_function(f"mentor.projection !== null && mentor.marks.some(m => m.id === '{ack['id']}')")
    drawn = page.evaluate(f"mentor.markUv('{ack['id']}')")
    assert drawn[0][2] is True and abs(drawn[0][0] - u) < 2.0 and abs(drawn[0][1] - v) < 2.0, (drawn, u, v)

    # Status bar: connected, tracking, a link grade from getStats, the participant list.
    page.wait_for_function("document.getElementById('link').textContent !== '-' && mentor.participants.length === 1")
    assert page.text_content("#tracking") == "tracking"
    assert page.text_content("#conn") == "connected"
    assert page.text_content("#link").split()[0] in ("good", "fair", "poor")
    assert "dr-m (mentor)" in page.text_content("#people")


def test_a_click_off_the_model_stays_2d_and_says_so(page: Any, setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, bridge, _ = setup
    _open(page, served, served.token("mentor", "dr-m"))
    page.wait_for_function("mentor.frames > 2")
    before = bridge.server.annotations[0]
    ack = _click(page, 5.0, 5.0)  # a corner: the sphere is in the middle of the image
    assert ack["ok"] and not ack["anchored"]
    assert ack["reason"] == "the ray missed the patient model"
    page.wait_for_function(f"mentor.marks.some(m => m.id === '{ack['id']}')")
    assert "2D only (the ray missed the patient model)" in page.text_content("#marks")
    assert bridge.server.annotations[0] == before  # nothing went to the headsets


def test_the_same_mark_sent_twice_is_applied_once(page: Any, setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, bridge, _ = setup
    _open(page, served, served.token("mentor", "dr-m"))
    before = bridge.server.annotations[0]
    # A re-send after a lost acknowledgement carries the same cid as the original.
    page.evaluate(
        "() => { const m = {type: 'annotate', cid: 'dup-1', kind: 'point', uv: [[320, 240]], rtp_ts: null};"
        " mentor.send(m); mentor.send(m); }"
    )
    page.wait_for_function("mentor.acks.filter(a => a.cid === 'dup-1').length >= 1 && mentor.pending.size === 0")
    page.wait_for_timeout(300)  # let a second ack (if any) arrive; the assertion is on the bridge log
    acks = page.evaluate("mentor.acks.filter(a => a.cid === 'dup-1')")
    assert len({a["id"] for a in acks}) == 1
    assert bridge.server.annotations[0] == before + 1


def test_observer_watches_but_cannot_mark(page: Any, setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, bridge, _ = setup
    _open(page, served, served.token("observer", "student"))
    page.wait_for_function("mentor.frames > 2")
    assert page.is_disabled("#tools input[value=point]")
    before = bridge.server.annotations[0]
    page.evaluate("mentor.send({type: 'annotate', cid: 'obs-1', kind: 'point', uv: [[320, 240]]})")
    page.wait_for_function("mentor.acks.some(a => a.cid === 'obs-1')")
    ack = page.evaluate("mentor.acks.find(a => a.cid === 'obs-1')")
    assert not ack["ok"] and ack["error"] == "role 'observer' cannot annotate"
    assert bridge.server.annotations[0] == before


@pytest.mark.parametrize("token", ["", "garbage.token", "EXPIRED"])
def test_a_bad_token_is_refused(page: Any, setup: tuple[Served, Bridge, HeadsetPoller], token: str) -> None:
    served, _, _ = setup
    if token == "EXPIRED":
        token = served.token(ttl_s=0.001)
        time.sleep(0.01)  # let the 1 ms lifetime pass (not synchronisation: the token must be old)
    _open(page, served, token)
    assert page.evaluate("mentor.conn") == "refused"
    assert page.text_content("#conn") == "refused"
    assert page.is_disabled("#tools input[value=point]")


def test_mentor_voice_reaches_the_headset(page: Any, setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, _, headset = setup
    headset.client.audio.clear()
    _open(page, served, served.token("mentor", "dr-v"))
    assert page.evaluate("mentor.voice")  # Chromium's fake microphone
    assert headset.wait_for(lambda c: sum(1 for a in list(c.audio) if a.speaker == "dr-v") >= 10, 10.0)
    chunk = next(a for a in list(headset.client.audio) if a.speaker == "dr-v")
    assert chunk.sample_rate == 16_000 and chunk.channels == 1 and len(chunk.pcm) % 2 == 0


def test_annotation_only_mode_still_marks(page: Any, setup: tuple[Served, Bridge, HeadsetPoller], scene: Scene) -> None:
    served, _, _ = setup
    _open(page, served, served.token("mentor", "dr-m"))
    page.select_option("#quality", "none")
    page.wait_for_function("mentor.participants.some(p => p.quality === 'none')")
    assert page.is_visible("#novideo")
    ack = _click(page, 330.0, 250.0)  # no frame: the latest pose is used
    expected = scene.expected_hit(330.0, 250.0)
    assert ack["anchored"] and expected is not None
    assert np.linalg.norm(np.asarray(ack["point_model_mm"]) - expected) < 2.0


def test_the_audit_log_has_joins_marks_and_refusals(setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, _, _ = setup
    wanted = {"join", "annotation", "refused", "refused_annotation"}
    events = audit_events(served.audit_path, lambda ev: wanted <= {e.action for e in ev})
    actions = {e.action for e in events}
    assert wanted <= actions, actions
    marks = [e for e in events if e.action == "annotation" and e.detail["anchored"]]
    assert marks and all(len(e.detail["point_model_mm"]) == 3 for e in marks)
    assert CAMERA.width == 640  # the scene the marks were made in


def test_leaving_is_audited(page: Any, setup: tuple[Served, Bridge, HeadsetPoller]) -> None:
    served, _, _ = setup
    _open(page, served, served.token("mentor", "leaver"))
    page.goto("about:blank")  # closes the peer connection
    events = audit_events(
        served.audit_path, lambda ev: any(e.action == "leave" and e.actor == "leaver" for e in ev), 10
    )
    assert any(e.action == "leave" and e.actor == "leaver" for e in events)


def test_auto_quality_drops_on_a_weak_link_with_hysteresis_and_a_manual_choice_turns_it_off(
    page: Any, setup: tuple[Served, Bridge, HeadsetPoller]
) -> None:
    served, _, _ = setup
    _open(page, served, served.token("mentor", "dr-auto"))
    me = "mentor.participants.find(p => p.id === mentor.participant)"  # the server's view of this page
    # Auto is the default, and the offer asked for a real level: the server has us on high.
    assert page.input_value("#quality") == "auto"
    page.wait_for_function(f"{me} && {me}.quality === 'high'")
    assert page.evaluate("[mentor.autoQuality, mentor.quality]") == [True, "high"]

    def feed(grades: list[str]) -> list[str]:
        """Made-up link grades, all in one synchronous evaluate: the page's own once-a-second
        grading cannot interleave. Each sequence starts with a grade that clears the runs it tests."""
        got: list[str] = page.evaluate(
            "(gs) => gs.map((g) => { mentor.autoQualityStep(g); return mentor.quality; })", grades
        )
        return got

    # Two poor seconds then a good one: no switch; 5 fair/poor in a row (never 3 poor): low.
    weak = feed(["good", "poor", "poor", "good", "fair", "poor", "fair", "poor", "fair"])
    assert weak == ["high"] * 8 + ["low"], weak
    page.wait_for_function(f"{me}.quality === 'low'")  # the server switched this viewer's encoder
    assert page.input_value("#quality") == "auto"
    assert page.text_content("#quality option[value=auto]") == "Auto: low now (weak link)"
    # Back up only after 10 good seconds in a row: 9 and then a poor one do not count.
    back = feed(["poor", *["good"] * 9, "poor", *["good"] * 10])
    assert back == ["low"] * 20 + ["high"], back
    page.wait_for_function(f"{me}.quality === 'high'")
    assert page.text_content("#quality option[value=auto]") == "Auto (high, low on a weak link)"
    assert feed(["good", "poor", "poor", "poor"]) == ["high", "high", "high", "low"]  # 3 poor: low
    assert feed(["poor"] * 30) == ["low"] * 30  # never down into annotation-only by itself

    # A manual choice turns auto off: high stays high however weak the link.
    page.select_option("#quality", "high")
    assert page.evaluate("[mentor.autoQuality, mentor.quality]") == [False, "high"]
    page.wait_for_function(f"{me}.quality === 'high'")
    assert feed(["poor"] * 6) == ["high"] * 6
    page.select_option("#quality", "low")  # ... and low stays low however good
    assert feed(["good"] * 12) == ["low"] * 12
    page.select_option("#quality", "none")
    page.wait_for_function(f"{me}.quality === 'none'")
    assert feed(["good"] * 12 + ["poor"] * 6) == ["none"] * 18
    # Auto again: from annotation-only back to high, then the weak-link rule applies again.
    page.select_option("#quality", "auto")
    assert page.evaluate("[mentor.autoQuality, mentor.quality]") == [True, "high"]
    page.wait_for_function(f"{me}.quality === 'high'")
    assert page.is_hidden("#novideo")
    assert feed(["good", "poor", "poor", "poor"]) == ["high", "high", "high", "low"]
    page.wait_for_function(f"{me}.quality === 'low'")
    log = page.evaluate("mentor.qualityLog.map((e) => [e.level, e.auto])")
    assert log == [
        ["low", True], ["high", True], ["low", True], ["high", False], ["low", False],
        ["none", False], ["high", True], ["low", True],
    ], log  # fmt: skip
