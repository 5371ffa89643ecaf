"""The mentor page as a specialist uses it, in the real (headless, system) Chromium: the
session's life cycle (reload, expiry, shutdown, a stalled stream), erase and undo, readable
marks, zoom, a phone-sized viewport and an accessibility scan.

Screenshots go to $MENTOR_SHOTS_DIR when it is set (for a person to look at)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mentor_fixtures import (
    CHROMIUM,
    SESSION,
    FramePump,
    Published,
    Scene,
    Served,
    audit_events,
    chromium_page,
    click_video,
    make_scene,
    serve,
    stop,
)

from mentor.signalling import Annotate
from mentor.tokens import verify

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"system Chromium not found at {CHROMIUM}"),
]

AXE = Path(__file__).parent / "tools" / "node_modules" / "axe-core" / "axe.min.js"
LIVE = "window.mentor && mentor.phase === 'live' && mentor.toolsEnabled && mentor.frames > 3"


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with chromium_page() as p:
        yield p


@pytest.fixture
def served(scene: Scene, tmp_path: Path) -> Iterator[tuple[Served, Published]]:
    published = Published()
    s = serve(scene, tmp_path, published)
    try:
        yield s, published
    finally:
        stop(s)  # idempotent: a test may have stopped it already


def _open(page: Any, served: Served, token: str, wait: str = LIVE) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto("about:blank")  # a new document: only the fragment would differ otherwise
    page.goto(served.server.url_for(SESSION, token))
    page.wait_for_function(wait)


def _until(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # polling with a deadline
    return True


def _shot(page: Any, name: str) -> None:
    folder = os.environ.get("MENTOR_SHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


_click = click_video  # the one click helper, in mentor_fixtures


def _refusals(served: Served) -> int:
    return int(served.server.call(lambda: served.room.counters.get("refused_token", 0)))


def test_a_reload_keeps_the_session_and_the_token_stays_out_of_the_url_and_logs(
    page: Any, served: tuple[Served, Published], scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    s, _ = served
    token = s.token("mentor", "dr-r")
    with FramePump(s.room, scene), caplog.at_level(logging.DEBUG):
        _open(page, s, token)
        assert "token" not in page.url
        page.reload()
        page.wait_for_function(LIVE)
        assert "token" not in page.url and page.evaluate("location.hash") == ""
        assert page.text_content("#me") == "dr-r (mentor)"
        assert page.is_hidden("#banner") and page.text_content("#phase") == "live"
    assert _refusals(s) == 0
    assert caplog.records and token not in caplog.text and token.split(".")[1] not in caplog.text


def test_an_expired_link_says_so_stops_retrying_and_offers_a_new_link(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-x", ttl_s=3.0))
        # The server drops the peer when the token expires and says why on the data channel.
        page.wait_for_function("mentor.phase === 'expired'", timeout=10_000)
        assert "expired" in page.text_content("#bannertext")
        assert page.text_content("#phase") == "link expired"
        assert page.is_disabled("#tools input[value=point]")
        assert page.evaluate("mentor.participants.length") == 0 and page.text_content("#people") == ""
        page.click("#banneraction")
        assert "new mentor link" in page.text_content("#bannerhelp")
        _shot(page, "expired-1280x720")
        # A reload asks once (the token is kept in the tab), is told the link expired, stops.
        before = _refusals(s)
        page.reload()
        page.wait_for_function("mentor.phase === 'expired' && mentor.stopped")
        assert page.evaluate("mentor.retryPending()") is False
        assert _until(lambda: _refusals(s) == before + 1, 5.0)
        # The old page retried every 2 s for ever: over 2.5 s nothing more may come.
        assert not _until(lambda: _refusals(s) > before + 1, 2.5), _refusals(s)
        assert page.evaluate("mentor.refusals") == 1


def test_the_servers_shutdown_shows_session_ended(page: Any, served: tuple[Served, Published], scene: Scene) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-e"))
        s.server.stop()
    page.wait_for_function("mentor.phase === 'ended'")
    assert "The session has ended" in page.text_content("#bannertext")
    assert page.text_content("#phase") == "session ended" and page.text_content("#mic").startswith("off")
    assert page.is_disabled("#tools input[value=point]")
    assert page.evaluate("[mentor.stopped, mentor.retryPending()]") == [True, False]
    assert page.is_visible("#banneraction")  # "Try to rejoin", on request only
    _shot(page, "ended-1280x720")


def test_an_unreachable_server_is_retried_with_backoff_a_bounded_number_of_times(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    tries: list[str] = []

    def unreachable(route: Any) -> None:
        tries.append(route.request.url)
        route.abort()

    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-u"))
        page.evaluate("mentor.retryMs = [50, 100, 200]")  # the page's backoff, shortened for the test
        page.route("**/config", unreachable)
        try:
            hub = s.server.hubs[SESSION]  # the server drops the peer without a goodbye: a network fault
            s.server.call(lambda: [hub.loop.create_task(hub.remove(p, "test")) for p in list(hub.peers)])
            page.wait_for_function("mentor.phase === 'unreachable'")
        finally:
            page.unroute("**/config")
        assert len(tries) == 3  # one per backoff step, then it stops
        assert page.evaluate("mentor.phaseLog.filter((e) => e.phase === 'reconnecting').length") == 3
        assert "gave up after 3 tries" in page.text_content("#bannertext")
        assert page.is_disabled("#tools input[value=point]")
        page.click("#banneraction")  # "Retry now": the server is reachable again
        page.wait_for_function(LIVE)
        assert page.is_hidden("#banner")


def test_a_stalled_video_is_shown_and_clears_when_frames_return(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-s"))
    page.wait_for_function("mentor.phase === 'stalled'", timeout=5_000)
    stalled = page.evaluate("mentor.phaseLog.filter((e) => e.phase === 'stalled').pop().perf - mentor.lastFramePerf")
    assert 1000 <= stalled <= 1500, stalled  # no frame for 1 s, said within 1.5 s of the last one
    assert "Video stalled" in page.text_content("#bannertext") and page.is_visible("#banner")
    assert page.text_content("#phase") == "video stalled"
    _shot(page, "stalled-1280x720")
    with FramePump(s.room, scene):
        page.wait_for_function("mentor.phase === 'live'")
    assert page.is_hidden("#banner")


def _mark_of_another(s: Served, name: str, u: float, v: float) -> str:
    """A mark placed by another mentor (through the room, as their page would)."""
    claims = verify(s.secret, s.token("mentor", name), SESSION)
    req = Annotate(f"other-{u}-{v}", "label", ((u, v),), "incision", "#33e0ff", None, None)

    def place() -> str:
        ack = s.room.annotate(claims, req)
        s.server.hubs[SESSION].push_marks()
        return ack.id

    return str(s.server.call(place))


def test_erase_asks_before_removing_anothers_mark_and_undo_brings_marks_back(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, published = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-a"))
        mine = _click(page, 300.0, 200.0)
        assert mine["ok"] and mine["anchored"] and page.text_content("#notice") == "Mark placed on the model."
        page.wait_for_function(f"mentor.marks.some(m => m.id === '{mine['id']}')")
        page.keyboard.press("z")  # undo: my mark goes
        page.wait_for_function(f"!mentor.marks.some(m => m.id === '{mine['id']}')")
        assert ("delete", mine["id"]) in published.ops
        assert "Undone" in page.text_content("#notice")

        # Erase my own mark with the tool, where it is drawn: no question, then undo restores it.
        mine = _click(page, 320.0, 240.0)
        page.wait_for_function(f"mentor.drawn.some(d => d.id === '{mine['id']}')")
        page.keyboard.press("e")
        _click(page, 320.0, 240.0)
        page.wait_for_function(f"!mentor.marks.some(m => m.id === '{mine['id']}')")
        assert page.text_content("#notice").startswith("Mark erased")  # not "Mark kept in 2D: ."
        page.click("#undo")
        page.wait_for_function(f"mentor.marks.some(m => m.id === '{mine['id']}')")
        assert [op for op, a in published.ops if getattr(a, "id", a) == mine["id"]] == ["add", "delete", "add"]

        # Another mentor's mark: erase asks first; Cancel keeps it, Erase removes it.
        theirs = _mark_of_another(s, "dr-b", 250.0, 280.0)
        page.wait_for_function(f"mentor.drawn.some(d => d.id === '{theirs}')")
        assert "dr-b" in page.text_content("#legend") and "dr-a" in page.text_content("#legend")
        pt = page.evaluate("mentor.screenPoint(250, 280)")
        page.mouse.click(pt["x"], pt["y"])
        page.wait_for_selector("#confirm", state="visible")
        assert "dr-b's mark" in page.text_content("#confirmtext")
        page.click("#confirmno")
        assert page.is_hidden("#confirm") and page.evaluate(f"mentor.marks.some(m => m.id === '{theirs}')")
        page.mouse.click(pt["x"], pt["y"])
        page.click("#confirmyes")
        page.wait_for_function(f"!mentor.marks.some(m => m.id === '{theirs}')")
        assert "dr-b's" in page.text_content("#notice")
    events = audit_events(
        s.audit_path, lambda ev: any(e.action == "erase" and e.detail.get("id") == theirs for e in ev)
    )
    erased = [e for e in events if e.action == "erase" and e.detail.get("id") == theirs]
    assert erased and erased[0].actor == "dr-a" and erased[0].detail["author"] == "dr-b"
    assert any(e.action == "restore" and e.detail["id"] == mine["id"] for e in events)


def test_marks_list_is_keyboard_reachable_and_labels_do_not_overlap(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-k"))
        assert page.input_value("#labeltext") == ""  # no pre-filled "here"
        page.keyboard.press("t")
        assert page.evaluate("document.activeElement.id") == "labeltext"  # empty: asks for the text
        page.fill("#labeltext", "entry point")
        acks = [_click(page, 300.0 + 6 * i, 200.0 + 4 * i) for i in range(3)]  # three labels close together
        ack_2d = _click(page, 8.0, 8.0)  # off the model: stays 2D
        assert all(a["ok"] for a in acks) and not ack_2d["anchored"]
        page.wait_for_function("mentor.drawn.length === 4 && mentor.drawn.every(d => d.box)")
        boxes = page.evaluate("mentor.drawn.map(d => d.box)")
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                apart = apart or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
                assert apart, (a, b)
        _shot(page, "desktop-1280x720")
        # The list: buttons with times, focusable; activating one rings the mark.
        page.focus("#marks button.mark")
        page.keyboard.press("Enter")
        assert page.evaluate("document.querySelector('#marks button.mark').getAttribute('aria-current')") == "true"
        assert "2D only (the ray missed the patient model)" in page.text_content("#marks")
        # Keyboard marking: focus the view, move the crosshair, Enter places a point.
        page.keyboard.press("p")
        n = page.evaluate("mentor.acks.length")
        page.focus("#overlay")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("Enter")
        page.wait_for_function(f"mentor.acks.length > {n}")
        assert page.evaluate("mentor.acks[mentor.acks.length - 1].anchored") is True


def test_a_2d_mark_can_be_anchored_again_in_the_current_picture(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, published = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-2"))
        # A click on a frame whose pose is long gone: kept 2D, and it says why.
        page.evaluate(
            "mentor.send({type: 'annotate', cid: 'old-frame', kind: 'point', uv: [[320, 240]], t_capture_ns: '1'})"
        )
        page.wait_for_function("mentor.marks.some(m => !m.anchored)")
        old = page.evaluate("mentor.marks.find(m => !m.anchored)")
        assert old["reason"] == "no pose within 100 ms of the frame"
        page.click("#marks button[aria-label^='Anchor again']")
        page.wait_for_function("mentor.marks.length === 1 && mentor.marks[0].anchored")
        new = page.evaluate("mentor.marks[0]")
        assert new["id"] != old["id"] and new["uv"][0][2] is True
        assert page.text_content("#notice") == "Mark anchored on the model now."
        assert [op for op, _ in published.ops] == ["add"]  # the 2D one never reached the headset


def test_zoomed_clicks_still_land_on_the_clicked_pixel(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-z"))
        page.evaluate("mentor.zoom(2.5, 500, 300)")
        assert page.evaluate("mentor.view.z") == 2.5
        u, v = 330.0, 230.0
        ack = _click(page, u, v)
        expected = scene.expected_hit(u, v)
        assert ack["anchored"] and expected is not None
        assert np.linalg.norm(np.asarray(ack["point_model_mm"]) - expected) < 2.0
        page.click("#zoomreset")
        assert page.evaluate("[mentor.view.z, mentor.view.x, mentor.view.y]") == [1, 0, 0]
        small = page.locator("#stage").bounding_box()
        page.click("#fullscreen")
        page.wait_for_function("document.fullscreenElement && document.fullscreenElement.id === 'viewport'")
        page.wait_for_function(f"document.getElementById('stage').clientHeight > {small['height'] + 1}")
        assert page.text_content("#fullscreen").startswith("Exit fullscreen")
        page.keyboard.press("f")
        page.wait_for_function("!document.fullscreenElement")


def test_a_phone_viewport_shows_every_tool_without_horizontal_scrolling(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-p"))
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_function("document.documentElement.scrollWidth <= 390")
        controls = [f"#tools input[value={t}]" for t in ("point", "stroke", "label", "erase")]
        controls += ["#undo", "#labeltext", "#colour", "#fullscreen", "#zoomin", "#zoomout", "#mute", "#quality"]
        for sel in controls:
            box = page.locator(sel).bounding_box()
            assert box is not None and page.is_visible(sel), sel
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (sel, box)
            assert box["y"] + box["height"] <= 844, (sel, box)  # on the first screen, no scrolling
        stage = page.locator("#stage").bounding_box()
        assert stage is not None and stage["width"] >= 370
        _click(page, 300.0, 200.0)
        _shot(page, "phone-390x844")


def test_the_page_has_no_serious_accessibility_violations(
    page: Any, served: tuple[Served, Published], scene: Scene
) -> None:
    if not AXE.exists():
        pytest.skip(f"axe-core not installed at {AXE} (scripts/test.sh npm-installs tests/tools)")
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-y"))
        _click(page, 300.0, 200.0)
        page.add_script_tag(path=str(AXE))
        scan = (
            "async () => (await axe.run(document)).violations"
            ".filter((v) => ['serious', 'critical'].includes(v.impact))"
            ".map((v) => [v.id, v.impact, v.nodes.map((n) => n.target.join(' ')).slice(0, 3)])"
        )
        found = page.evaluate(scan)
        page.set_viewport_size({"width": 390, "height": 844})
        found_phone = page.evaluate(scan)
    assert found == [] and found_phone == [], (found, found_phone)


def test_microphone_is_shown_and_can_be_muted(page: Any, served: tuple[Served, Published], scene: Scene) -> None:
    s, _ = served
    with FramePump(s.room, scene):
        _open(page, s, s.token("mentor", "dr-v"))
        assert page.text_content("#mic") == "on"  # Chromium's fake microphone
        page.keyboard.press("m")
        assert page.text_content("#mic") == "muted"
        assert page.get_attribute("#mute", "aria-pressed") == "true"
        assert page.evaluate("mentor.peer().getSenders().every(x => !x.track || !x.track.enabled)")
        page.click("#mute")
        assert page.text_content("#mic") == "on"
        page.eval_on_selector("#volume", "(e) => { e.value = '0.3'; e.dispatchEvent(new Event('input')); }")
        assert abs(page.evaluate("document.getElementById('theatre').volume") - 0.3) < 1e-6
