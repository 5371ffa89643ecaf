"""Occlusion of marks and the mentor page's 3D view, on the synthetic head phantom.

The phantom's skin (imaging's own phantom, prepared once for the module) is the patient
model: a camera 400 mm in front of the face sees the nose, and the back of the head is
behind the anatomy. The browser tests drive the real Chromium at 1280x720 and save their
screenshots to /tmp/mentor-shots.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mentor_fixtures import (
    CAMERA,
    CHROMIUM,
    SESSION,
    FramePump,
    Published,
    Scene,
    Served,
    chromium_page,
    click_video,
    look_at,
    rigid,
    serve,
    stop,
)

from headset_bridge.glb import positions_lps_mm
from mentor.anchoring import MeshRayCaster
from mentor.model_view import MAX_OFF_SURFACE_MM, mesh_glb
from mentor.occlusion import TOLERANCE_MM, camera_centre_model, occluded
from mentor.room import MentorRoom
from mentor.signalling import Annotate, SignallingError, parse_message
from mentor.tokens import Claims, issue, new_secret

SHOTS = Path("/tmp/mentor-shots")
FRONT_EYE_MM = np.array([0.0, -400.0, 0.0])  # LPS: 400 mm anterior of the head's origin
BACK_EYE_MM = np.array([0.0, 400.0, 35.0])
T_WORLD_MODEL = rigid((0.1, -0.2, 0.15), (100.0, 50.0, -20.0))


@dataclass(frozen=True)
class Phantom:
    vertices: np.ndarray
    triangles: np.ndarray
    glb: bytes
    caster: MeshRayCaster

    def surface_hit(self, origin: np.ndarray, target: np.ndarray) -> np.ndarray:
        d = (target - origin) / np.linalg.norm(target - origin)
        t = self.caster.first_hit(origin, d)
        assert np.isfinite(t), (origin, target)
        hit: np.ndarray = origin + t * d
        return hit

    def scene(self, eye_model: np.ndarray, target_model: np.ndarray) -> Scene:
        to_world = lambda p: (T_WORLD_MODEL @ np.append(p, 1.0))[:3]  # noqa: E731
        return Scene(self.caster, T_WORLD_MODEL, look_at(to_world(eye_model), to_world(target_model)))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Phantom:
    """The skin of imaging's synthetic head phantom (about 2 s), as a session would load it."""
    from imaging.prepare import PrepareOptions, prepare_phantom
    from registration import SurfaceModel

    out = tmp_path_factory.mktemp("phantom") / "model"
    prepare_phantom(out, PrepareOptions(segments=("skin",), triangle_budget=20_000))
    model = SurfaceModel.from_folder(out, mesh="skin", prepare_alignment=False)
    return Phantom(
        model.vertices,
        model.triangles,
        (out / "model.glb").read_bytes(),
        MeshRayCaster(model.vertices, model.triangles),
    )


def _claims(role: str = "mentor", name: str = "dr-m") -> Claims:
    return Claims(session=SESSION, role=role, name=name, nonce=f"n-{name}", expires_at=2e9)  # type: ignore[arg-type]


def _room(phantom: Phantom, scene: Scene, published: Published) -> MentorRoom:
    room = MentorRoom(SESSION, new_secret(), phantom.caster, CAMERA, published, None)
    room.push_pose(1, scene.pose())
    return room


def _annotate(room: MentorRoom, cid: str, **fields: Any) -> Any:
    msg = parse_message(json.dumps({"type": "annotate", "cid": cid, "kind": "point", **fields}))
    assert isinstance(msg, Annotate)
    return room.annotate(_claims(), msg)


# -- occlusion ------------------------------------------------------------------------------
def test_the_back_of_the_head_is_occluded_from_the_front_and_the_face_is_not(phantom: Phantom) -> None:
    centre = np.array([0.0, 0.0, 0.0])
    nose = phantom.surface_hit(FRONT_EYE_MM, centre)
    back = phantom.surface_hit(BACK_EYE_MM, np.array([0.0, 0.0, 35.0]))
    assert nose[1] < -60 and back[1] > 60, (nose, back)  # anterior face, posterior cranium
    hidden = occluded(phantom.caster, FRONT_EYE_MM, [nose, back])
    assert hidden.tolist() == [False, True]
    # From behind, the other way round; a point a little under the visible skin is hidden too.
    assert occluded(phantom.caster, BACK_EYE_MM, [nose, back]).tolist() == [True, False]
    under = nose + (centre - FRONT_EYE_MM) / 400.0 * (TOLERANCE_MM + 3.0)
    assert occluded(phantom.caster, FRONT_EYE_MM, [under]).tolist() == [True]
    with pytest.raises(ValueError, match="points must be"):
        occluded(phantom.caster, FRONT_EYE_MM, [[1.0, 2.0]])


def test_status_flags_the_occluded_mark_and_follows_the_pose(phantom: Phantom) -> None:
    front = phantom.scene(FRONT_EYE_MM, np.zeros(3))
    published = Published()
    room = _room(phantom, front, published)
    face = _annotate(room, "face", uv=[[CAMERA.cx, CAMERA.cy]])  # a video click at the image centre: the nose
    back_point = phantom.surface_hit(BACK_EYE_MM, np.array([0.0, 0.0, 35.0]))
    back = _annotate(room, "back", point_model_mm=[float(c) for c in back_point])
    assert face.ok and face.anchored and back.ok and back.anchored, (face, back)
    assert np.allclose(
        camera_centre_model(front.T_world_camera, front.T_world_model), FRONT_EYE_MM, atol=1e-6
    )  # the test's geometry is what it says
    status = room.status_view()
    assert status["occluded"] == {back.id: [True]}
    # The headset walks round to the back: the face is hidden now, the back in sight.
    behind = phantom.scene(BACK_EYE_MM, np.array([0.0, 0.0, 35.0]))
    room.push_pose(2, behind.pose())
    assert room.status_view()["occluded"] == {face.id: [True]}


# -- marks placed on the 3D model -----------------------------------------------------------
def test_a_3d_point_is_moved_onto_the_model_and_one_off_it_is_refused(phantom: Phantom) -> None:
    published = Published()
    room = _room(phantom, phantom.scene(FRONT_EYE_MM, np.zeros(3)), published)
    nose = phantom.surface_hit(FRONT_EYE_MM, np.zeros(3))
    outward = (FRONT_EYE_MM - nose) / np.linalg.norm(FRONT_EYE_MM - nose)
    ack = _annotate(room, "near", point_model_mm=(nose + 2.0 * outward).tolist())
    assert ack.ok and ack.anchored and ack.reason == "placed on the 3D model", ack
    assert np.linalg.norm(np.asarray(ack.point_model_mm) - nose) < 2.5
    assert (
        np.linalg.norm(phantom.caster.closest_points(np.asarray([ack.point_model_mm]))[0] - ack.point_model_mm) < 0.01
    )
    assert [op for op, _ in published.ops] == ["add"]
    far = _annotate(room, "far", point_model_mm=(nose + (MAX_OFF_SURFACE_MM + 15.0) * outward).tolist())
    assert not far.ok and "off the model surface" in far.error, far
    assert len(published.ops) == 1  # nothing more went to the headsets
    for bad, why in (
        ({"kind": "stroke", "point_model_mm": [0, 0, 0]}, "places one point or label"),
        ({"point_model_mm": [0, 0, 0], "uv": [[1, 2]]}, "takes no uv"),
        ({"point_model_mm": [0, "x", 0]}, "point_model_mm must be"),
        ({"point_model_mm": [0, 1e9, 0]}, "point_model_mm must be"),
        ({"point_model_mm": [0, 0]}, "point_model_mm must be"),
    ):
        with pytest.raises(SignallingError, match=why):
            parse_message(json.dumps({"type": "annotate", "cid": "c", "kind": "point", **bad}))
    with pytest.raises(SignallingError, match="point_model_mm must be"):
        parse_message('{"type": "annotate", "cid": "c", "kind": "point", "point_model_mm": [NaN, 0, 0]}')


# -- the model route -------------------------------------------------------------------------
def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_the_model_route_needs_a_valid_token_in_the_header(phantom: Phantom, tmp_path: Path) -> None:
    served = serve(phantom.scene(FRONT_EYE_MM, np.zeros(3)), tmp_path, Published())
    try:
        url = f"{served.url}/s/{SESSION}/model.glb"
        good = served.token()
        other = issue(new_secret(), SESSION, "mentor", "dr-x", 600.0)
        for headers, why in (
            ({}, "missing"),
            ({"Authorization": f"Bearer {other}"}, ""),
            ({"Authorization": f"Bearer {issue(served.secret, SESSION, 'mentor', 'dr-m', 60.0, now=0.0)}"}, "expired"),
        ):
            status, body, _ = _get(url, headers)
            assert status == 401, (headers, status)
            assert why in json.loads(body)["error"]
        status, _, _ = _get(f"{url}?token={good}")  # a token in the URL is never read
        assert status == 401
        assert _get(f"{served.url}/s/nope/model.glb", {"Authorization": f"Bearer {good}"})[0] == 404
        # No GLB given: the ray-casting mesh itself, in glTF metres, read back in LPS mm.
        status, body, kind = _get(url, {"Authorization": f"Bearer {served.token('observer', 'obs')}"})
        assert status == 200 and kind == "model/gltf-binary"
        assert np.allclose(positions_lps_mm(body), phantom.vertices, atol=1e-3)
        # The session's GLB, when given, is served as it is (what the headsets show).
        served.room.model_glb = phantom.glb
        assert _get(url, {"Authorization": f"Bearer {good}"})[1] == phantom.glb
        # The vendored three.js is served; nothing else of its folder is.
        status, body, kind = _get(f"{served.url}/static/vendor/three/three.min.js")
        assert status == 200 and kind.startswith("text/javascript") and b"SPDX-License-Identifier: MIT" in body[:400]
        for path in ("vendor/three/LICENSE", "vendor/three/../../server.py", "vendor/three/README.md"):
            assert _get(f"{served.url}/static/{path}")[0] == 404, path
    finally:
        stop(served)


def test_mesh_glb_is_valid_and_refuses_bad_meshes(phantom: Phantom) -> None:
    glb = mesh_glb(phantom.vertices, phantom.triangles)
    magic, version, length = struct.unpack_from("<4sII", glb)
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    assert np.allclose(positions_lps_mm(glb), phantom.vertices, atol=1e-3)
    with pytest.raises(ValueError, match="indexing them"):
        mesh_glb(phantom.vertices[:3], [[0, 1, 5]])


def test_the_vendored_three_js_is_the_pinned_build_and_exports_what_the_view_imports() -> None:
    import hashlib
    import re

    static = Path(__file__).resolve().parents[1] / "mentor" / "static"
    bundle = (static / "vendor" / "three" / "three.min.js").read_text()
    readme = (static / "vendor" / "three" / "README.md").read_text()
    assert hashlib.sha256(bundle.encode()).hexdigest() in readme  # rebuilt only by scripts/vendor_three.sh
    assert "MIT License" in (static / "vendor" / "three" / "LICENSE").read_text()
    exported = set(re.findall(r"\bas (\w+)", bundle[bundle.rindex("export{") :]))
    view = (static / "mentor3d.js").read_text()
    imported = {n.strip() for block in re.findall(r"import \{([^}]*)\} from", view) for n in block.split(",")} - {""}
    assert imported and imported <= exported, imported - exported


# -- the page in Chromium -------------------------------------------------------------------
@dataclass
class Live:
    served: Served
    published: Published
    page: Any
    phantom: Phantom
    pump: FramePump  # its scene may be swapped to move the headset


@pytest.fixture(scope="module")
def live(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not CHROMIUM.exists():
        pytest.skip(f"system Chromium not found at {CHROMIUM}")
    scene = phantom.scene(FRONT_EYE_MM, np.zeros(3))
    published = Published()
    served = serve(scene, tmp_path_factory.mktemp("mentor-3d"), published)
    served.room.model_glb = phantom.glb
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with FramePump(served.room, scene) as pump, chromium_page(("--enable-unsafe-swiftshader",)) as page:
            page.set_viewport_size({"width": 1280, "height": 720})
            page.goto(served.server.url_for(SESSION, served.token("mentor", "dr-m")))
            page.wait_for_function("window.mentor3d && (mentor3d.loaded || mentor3d.error)", timeout=20_000)
            page.wait_for_function("mentor.phase === 'live' || mentor.conn === 'connected'")
            yield Live(served, published, page, phantom, pump)
    finally:
        stop(served)


def _glb_triangles(glb: bytes) -> int:
    n = struct.unpack_from("<I", glb, 12)[0]
    doc = json.loads(glb[20 : 20 + n])
    return sum(doc["accessors"][p["indices"]]["count"] // 3 for m in doc["meshes"] for p in m["primitives"])


# The most opaque overlay pixel within 9 px of where a mark is drawn now (its ring; tags keep clear).
MAX_ALPHA_NEAR_MARK = """(id) => {
  const d = mentor.drawn.find((x) => x.id === id), c = document.getElementById("overlay"), r = 9;
  const px = c.getContext("2d").getImageData(Math.round(d.pts[0][0] - r), Math.round(d.pts[0][1] - r), 2 * r, 2 * r).data;
  let best = 0;
  for (let i = 3; i < px.length; i += 4) best = Math.max(best, px[i]);
  return best;
}"""


@pytest.mark.browser
def test_the_3d_view_loads_the_model_and_shows_a_video_mark_at_its_model_point(live: Live) -> None:
    page = live.page
    assert page.evaluate("mentor3d.error") is None
    assert page.evaluate("mentor3d.loaded") is True
    assert page.evaluate("mentor3d.triangles") == _glb_triangles(live.phantom.glb) > 1000
    page.wait_for_function("mentor.frames > 2 && mentor.projection !== null")
    ack = click_video(page, CAMERA.cx + 40.0, CAMERA.cy + 30.0)  # the cheek, beside the nose
    assert ack["ok"] and ack["anchored"], ack
    page.wait_for_function(f"mentor3d.marks['{ack['id']}'] !== undefined")
    shown = np.asarray(page.evaluate(f"mentor3d.marks['{ack['id']}'][0]"))  # from the three.js object
    assert np.linalg.norm(shown - np.asarray(ack["point_model_mm"])) < 2.0, (shown, ack["point_model_mm"])
    # The headset's viewpoint: the frustum's apex is the camera centre in the model frame.
    page.wait_for_function("mentor3d.frustum !== null && mentor3d.tracking === 'tracking'")
    apex = np.asarray(page.evaluate("mentor3d.frustum.centre_mm"))
    assert np.linalg.norm(apex - FRONT_EYE_MM) < 1.0, apex
    page.wait_for_function(  # the panel counts the anchored marks it shows
        "document.getElementById('view3d-status').textContent.includes("
        "`${mentor.marks.filter((m) => m.anchored).length} mark`)"
    )
    assert page.text_content("#view3d-status").startswith("Headset: tracking")
    page.screenshot(path=str(SHOTS / "mentor-3d-view.png"))


@pytest.mark.browser
def test_a_mark_placed_on_the_3d_model_is_published_anchored(live: Live) -> None:
    page = live.page
    page.wait_for_function("mentor3d.frustum !== null")  # the view is fitted once more then
    # A drag turns the view (drawn again) and places nothing; the handler runs on pointerup.
    box = page.locator("#view3d-canvas").bounding_box()
    sent, renders = page.evaluate("[mentor3d.sent.length, mentor3d.renders]")
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.45 * box["height"], steps=5)
    page.mouse.up()
    page.wait_for_function(f"mentor3d.renders > {renders}")
    assert page.evaluate("mentor3d.sent.length") == sent
    target = live.phantom.surface_hit(FRONT_EYE_MM + np.array([30.0, 0.0, 20.0]), np.array([30.0, 0.0, 20.0]))
    at = page.evaluate(f"mentor3d.screenOf({json.dumps(target.tolist())})")
    assert at["inView"], at
    n, before = page.evaluate("mentor.acks.length"), len(live.published.ops)
    page.check("#tools input[value=label]")
    page.fill("#labeltext", "incision")
    try:
        page.mouse.click(at["x"], at["y"])
        page.wait_for_function(f"mentor.acks.length > {n}")
    finally:
        page.check("#tools input[value=point]")
    ack = page.evaluate("mentor.acks[mentor.acks.length - 1]")
    assert ack["ok"] and ack["anchored"] and ack["reason"] == "placed on the 3D model", ack
    ops = live.published.ops[before:]
    assert [op for op, _ in ops] == ["add"]
    ann = ops[0][1]
    assert not isinstance(ann, str) and ann.author == "dr-m" and (ann.kind, ann.text) == ("label", "incision")
    # The page's own pick on the GLB, moved onto the ray-casting mesh (the same skin here):
    # where it was clicked, near the target (a screen pixel is ~1.5 mm there, more where the
    # skin is seen at a slant).
    picked = np.asarray(page.evaluate("mentor3d.sent[mentor3d.sent.length - 1].point_model_mm"))
    assert np.linalg.norm(np.asarray(ann.points_mm[0]) - picked) < 0.5, (ann.points_mm, picked)
    assert np.linalg.norm(picked - target) < 10.0, (picked, target)
    page.wait_for_function(f"mentor3d.marks['{ack['id']}'] !== undefined")


@pytest.mark.browser
def test_a_mark_behind_the_anatomy_is_drawn_dimmed_on_the_video(live: Live) -> None:
    page = live.page
    page.wait_for_function("mentor.frames > 2 && mentor.projection !== null")
    face = click_video(page, CAMERA.cx - 50.0, CAMERA.cy + 20.0)
    back_point = live.phantom.surface_hit(BACK_EYE_MM, np.array([0.0, 0.0, 35.0]))
    msg = parse_message(
        json.dumps({"type": "annotate", "cid": "back-1", "kind": "point", "point_model_mm": back_point.tolist()})
    )
    back = live.served.server.call(live.served.room.annotate, _claims(name="dr-b"), msg)
    live.served.server.call(live.served.server.hubs[SESSION].push_marks)
    assert face["ok"] and face["anchored"] and back.ok and back.anchored
    ids = json.dumps([face["id"], back.id])
    page.wait_for_function(f"{ids}.every(id => id in mentorOcclusion.drawn)")
    page.wait_for_function(f"mentorOcclusion.drawn['{back.id}'] === true")
    assert page.evaluate(f"mentorOcclusion.drawn['{face['id']}']") is False
    # On the overlay canvas the hidden mark is drawn at part opacity, the visible one fully.
    alpha, alpha_face = (page.evaluate(MAX_ALPHA_NEAR_MARK, i) for i in (back.id, face["id"]))
    assert alpha_face == 255 and alpha < 200, (alpha_face, alpha)
    page.screenshot(path=str(SHOTS / "mentor-occluded-mark.png"))


# Resolves once the page has painted twice more: a change the view took in is drawn by then.
AFTER_A_PAINT = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"


@pytest.mark.browser
def test_a_moving_headset_and_new_marks_link_no_new_shader_programs(live: Live) -> None:
    """Each shader program three.js links stalls the page (50-300 ms in software graphics). The
    view keeps its materials: a pose change moves the frustum in place and new marks of one
    colour share one material, so neither links a program (at most one for the new colour)."""
    page = live.page
    page.wait_for_function("mentor3d.frustum !== null && mentor3d.renders > 0")
    page.evaluate(AFTER_A_PAINT)
    links, programs, renders = page.evaluate("[mentor3d.links, mentor3d.programs, mentor3d.renders]")
    assert links >= programs >= 3, (links, programs)  # the model, the marks, the frustum (at least)
    still = live.pump.scene
    try:
        for i in range(1, 21):  # the headset walks to its left and up, pose after pose
            eye = FRONT_EYE_MM + np.array([4.0 * i, 0.0, 2.0 * i])
            live.pump.scene = live.phantom.scene(eye, np.zeros(3))
            page.wait_for_function(
                f"mentor3d.frustum && Math.abs(mentor3d.frustum.centre_mm[0] - {eye[0]}) < 0.5"
                f" && Math.abs(mentor3d.frustum.centre_mm[2] - {eye[2]}) < 0.5"
            )
    finally:
        live.pump.scene = still
    page.evaluate(AFTER_A_PAINT)
    assert page.evaluate("mentor3d.renders") > renders
    assert page.evaluate("[mentor3d.links, mentor3d.programs]") == [links, programs]
    ids: list[str] = []
    for i in range(5):
        aim = np.array([-40.0 + 20.0 * i, 0.0, -10.0])
        at = live.phantom.surface_hit(FRONT_EYE_MM + aim, aim)
        msg = parse_message(
            json.dumps(
                {
                    "type": "annotate",
                    "cid": f"prog-{i}",
                    "kind": "point",
                    "point_model_mm": at.tolist(),
                    "color": "#3366ff",
                }
            )
        )
        ack = live.served.server.call(live.served.room.annotate, _claims(name="dr-prog"), msg)
        assert ack.ok and ack.anchored, ack
        ids.append(ack.id)
        live.served.server.call(live.served.server.hubs[SESSION].push_marks)
        page.wait_for_function(f"mentor3d.marks['{ack.id}'] !== undefined")
        shown = np.asarray(page.evaluate(f"mentor3d.marks['{ack.id}'][0]"))
        assert np.linalg.norm(shown - np.asarray(ack.point_model_mm)) < 0.01, (shown, ack.point_model_mm)
    assert page.evaluate(f"{json.dumps(ids)}.every((id) => id in mentor3d.marks)")
    page.evaluate(AFTER_A_PAINT)
    after_links, after_programs = page.evaluate("[mentor3d.links, mentor3d.programs]")
    assert after_links - links <= 1 and after_programs - programs <= 1, (links, after_links, programs, after_programs)


@pytest.mark.browser
def test_the_3d_view_works_under_the_pages_own_csp(live: Live) -> None:
    """The other browser tests bypass the CSP (Playwright's waits need eval): here a second
    tab keeps it, so a script the CSP would block (inline, eval, another origin) fails."""
    context = live.page.context.browser.new_context()
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.goto(live.served.server.url_for(SESSION, live.served.token("observer", "obs-csp")))
        page.wait_for_selector("#view3d-status.good", timeout=20_000)  # loaded, and the headset tracking
        assert page.evaluate("[mentor3d.loaded, mentor3d.error]") == [True, None]
        assert page.evaluate("mentor3d.triangles") == _glb_triangles(live.phantom.glb)
    finally:
        context.close()
    refused = [c for c in console if "Content Security Policy" in c or "Refused to" in c]
    assert refused == [], refused
