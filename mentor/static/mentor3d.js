// scrubin mentor page: the 3D view of the patient model (three.js, vendored; see vendor/three).
// It shows the session's GLB, every anchored mark at its model point, the headset camera's
// viewpoint (a frustum from the newest status's P_image_model) and the tracking status; a
// mentor's click on the model sends an annotate message with that model point, which the
// server anchors like a video click (and refuses when it is off the model surface).
//
// Frames: the GLB is glTF metres (+Y superior, +Z anterior); marks and clicks travel in patient
// LPS millimetres: x_gltf = x / 1000, y_gltf = z / 1000, z_gltf = -y / 1000 (imaging/gltf.py).
// The page's main script (mentor.js) owns the connection; this one reads window.mentor (its
// state: marks, projection, tracking, role) and sends through window.mentor.send.
import {
  AmbientLight, Box3, BufferGeometry, CanvasTexture, Color, DirectionalLight, Group,
  LineBasicMaterial, LineSegments, Mesh, MeshBasicMaterial, PerspectiveCamera,
  Raycaster, Scene, SphereGeometry, Sprite, SpriteMaterial, Vector2, Vector3, WebGLRenderer,
} from "/static/vendor/three/three.min.js";
import { GLTFLoader, OrbitControls } from "/static/vendor/three/three.min.js";

// Every shader program three.js links stalls the page for 50-300 ms in software graphics
// (SwiftShader), and it links one whenever the last material using it is disposed and a new
// one made. So the view makes its materials and geometries once (one material per mark
// colour, one sphere for every mark) and moves, scales and recolours them in place; it
// disposes them only when it is torn down.
const MARK_RADIUS_M = 0.004;
const CLICK_SLOP_PX = 5; // a press that moved further is an orbit drag, not a click
const STATUS_COLOURS = { tracking: 0x44dd66, degraded: 0xffcc33, lost: 0xff5555 };
const DEFAULT_COLOUR = "#ffcc00";
const MAX_MATERIALS = 64; // mark colours kept; past it, those no mark shows are let go
const FRUSTUM_POINTS = 18; // 4 edges to the apex, the 4-edge rim, the optical axis: 9 segments
// The model's fetch, parse and first drawing wait for the first video frame (the video comes
// first: they hold the main thread for hundreds of ms), or this long without one.
const FIRST_FRAME_WAIT_MS = 3000;

const view = { // read by tests and by people debugging a session
  loaded: false, error: null, triangles: 0, meshes: 0, renders: 0, sent: [],
  marks: {}, // mark id -> model points (LPS mm) of its spheres, read back from three.js objects
  frustum: null, // {centre_mm, corners_mm} of the headset camera, or null without a pose
  programs: 0, // shader programs three.js holds now (renderer.info.programs)
  links: 0, // shader programs linked since the view started (each one a stall; see above)
};
window.mentor3d = view;

const lpsToGltf = (p) => new Vector3(p[0] / 1000, p[2] / 1000, -p[1] / 1000);
const gltfToLps = (v) => [v.x * 1000, -v.z * 1000, v.y * 1000];
const $ = (id) => document.getElementById(id);

function panel() {
  let root = $("view3d");
  if (!root) { // the page has no place for it: put it at the top of the side panel
    root = document.createElement("section");
    root.id = "view3d";
    (document.querySelector("aside") || document.body).prepend(root);
  }
  root.setAttribute("aria-label", "3D view of the patient model");
  const head = document.createElement("h2");
  head.textContent = "Patient model (3D)";
  const canvas = document.createElement("canvas");
  canvas.id = "view3d-canvas";
  canvas.setAttribute("aria-label", "3D model: drag to turn, wheel to zoom; click to place a mark");
  const status = document.createElement("p");
  status.id = "view3d-status";
  status.setAttribute("role", "status");
  status.textContent = "Loading the patient model…";
  const bar = document.createElement("div");
  bar.className = "view3d-bar";
  const reset = document.createElement("button");
  reset.type = "button";
  reset.textContent = "Reset view";
  const see = document.createElement("label");
  const seeBox = document.createElement("input");
  seeBox.type = "checkbox";
  seeBox.id = "view3d-xray";
  see.append(seeBox, " See-through skin");
  bar.append(reset, see);
  root.replaceChildren(head, canvas, bar, status);
  return { root, canvas, status, reset, seeBox };
}

function say(ui, text, cls) {
  ui.status.textContent = text;
  ui.status.className = cls || "";
}

function waitForVideo(state) {
  return new Promise((resolve) => {
    const until = performance.now() + FIRST_FRAME_WAIT_MS;
    const done = () => state.frames > 0 || state.quality === "none" || performance.now() >= until; // "none": no video asked for
    const tick = () => (done() ? resolve() : setTimeout(tick, 50));
    tick();
  });
}

async function fetchModel() {
  const state = window.mentor;
  const r = await state.fetch("model.glb", { signal: AbortSignal.timeout(30000) });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.error || `HTTP ${r.status}`);
  }
  return r.arrayBuffer();
}

function parseGlb(buffer) {
  return new Promise((resolve, reject) => new GLTFLoader().parse(buffer, "", resolve, reject));
}

// -- the scene --------------------------------------------------------------------------
function countLinks(gl) { // cheap: a program link is rare once the view is up
  const link = gl.linkProgram.bind(gl);
  gl.linkProgram = (program) => { view.links += 1; link(program); };
}

function makeScene(ui) {
  const renderer = new WebGLRenderer({ canvas: ui.canvas, antialias: true }); // throws without WebGL
  countLinks(renderer.getContext());
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  const scene = new Scene();
  scene.background = new Color(0x1a1a1a);
  const camera = new PerspectiveCamera(35, 4 / 3, 0.005, 10);
  scene.add(new AmbientLight(0xffffff, 0.55));
  const sun = new DirectionalLight(0xffffff, 1.6);
  camera.add(sun); // light from the viewer: the side looked at is always lit
  scene.add(camera);
  const controls = new OrbitControls(camera, ui.canvas);
  const marks = new Group();
  const frustum = new Group();
  scene.add(marks, frustum);
  const s = {
    renderer, scene, camera, controls, marks, frustum, model: null, box: null, dirty: true,
    ball: new SphereGeometry(1, 16, 12), // every mark and the headset's eye, scaled
    materials: new Map(), // mark colour -> its material
    shown: new Map(), // mark id -> {balls, label, key, labelKey}
    spare: [], // label sprites of marks gone, reused for the next labels
  };
  makeFrustum(s);
  return s;
}

function addModel(s, gltf) {
  let triangles = 0, meshes = 0;
  const skins = [];
  gltf.scene.traverse((o) => {
    if (!o.isMesh) return;
    meshes += 1;
    const g = o.geometry;
    triangles += (g.index ? g.index.count : g.attributes.position.count) / 3;
    if (!g.attributes.normal) { g.computeVertexNormals(); o.material.flatShading = false; o.material.needsUpdate = true; }
    if (!o.material.transparent) skins.push(o);
  });
  s.model = gltf.scene;
  s.scene.add(gltf.scene);
  s.box = new Box3().setFromObject(gltf.scene);
  s.opaque = skins.slice(0, 1); // the first opaque mesh is the skin (imaging writes it first)
  return { triangles, meshes };
}

// The view from the front-left-above, fitted to the model and, once there is a pose, the headset.
function home(s) {
  const box = s.box.clone();
  if (view.frustum) box.expandByPoint(lpsToGltf(view.frustum.centre_mm));
  const centre = box.getCenter(new Vector3());
  const size = box.getSize(new Vector3()).length();
  s.controls.target.copy(centre);
  // In front (anterior), from the patient's left and above: the face, one side and the
  // headset's frustum in front of them are all in sight.
  s.camera.position.copy(centre).add(new Vector3(0.5 * size, 0.3 * size, 0.85 * size));
  s.camera.near = size / 100;
  s.camera.far = size * 20;
  s.camera.updateProjectionMatrix();
  s.controls.update();
  s.dirty = true;
}

function resize(s, ui) {
  const w = ui.canvas.clientWidth || 320, h = ui.canvas.clientHeight || 240;
  const c = ui.canvas;
  const pr = s.renderer.getPixelRatio();
  if (c.width === Math.round(w * pr) && c.height === Math.round(h * pr)) return;
  s.renderer.setSize(w, h, false);
  s.camera.aspect = w / h;
  s.camera.updateProjectionMatrix();
  s.dirty = true;
}

// -- marks ------------------------------------------------------------------------------
function marksKey(items) {
  return JSON.stringify((items || []).filter((m) => m.anchored && m.points_mm).map((m) => [m.id, m.kind, m.color, m.text, m.points_mm]));
}

function markMaterial(s, colour) {
  let material = s.materials.get(colour);
  if (!material) {
    // Marks stay visible through the skin: the mentor must see one placed on the far side.
    material = new MeshBasicMaterial({ color: new Color(colour), depthTest: false, transparent: true, opacity: 0.95 });
    s.materials.set(colour, material);
  }
  return material;
}

// The page's marks, shown: a mark that did not change is left as it is; one that did is moved
// and recoloured in place; one gone gives its label sprite to the next label.
function showMarks(s, items) {
  const size = s.box.getSize(new Vector3()).length();
  const radius = Math.max(MARK_RADIUS_M, size / 150);
  const live = new Set();
  view.marks = {};
  for (const m of items || []) {
    if (!m.anchored || !m.points_mm || !m.points_mm.length) continue;
    live.add(m.id);
    let e = s.shown.get(m.id);
    if (!e) { e = { balls: [], label: null, key: "", labelKey: "" }; s.shown.set(m.id, e); }
    const key = JSON.stringify([m.kind, m.color, m.text, m.points_mm]);
    if (key !== e.key) { e.key = key; placeMark3d(s, e, m, radius, size); }
    view.marks[m.id] = e.balls.map((b) => gltfToLps(b.getWorldPosition(new Vector3())));
  }
  for (const [id, e] of s.shown) {
    if (live.has(id)) continue;
    for (const b of e.balls) s.marks.remove(b);
    setLabel(s, e, "", "", null, size);
    s.shown.delete(id);
  }
  if (s.materials.size > MAX_MATERIALS) pruneMaterials(s);
  s.dirty = true;
}

function placeMark3d(s, e, m, radius, size) {
  const colour = m.color || DEFAULT_COLOUR;
  const material = markMaterial(s, colour);
  const points = m.kind === "stroke" ? m.points_mm : m.points_mm.slice(0, 1);
  while (e.balls.length > points.length) s.marks.remove(e.balls.pop());
  while (e.balls.length < points.length) {
    const ball = new Mesh(s.ball, material);
    ball.renderOrder = 2;
    ball.userData.markId = m.id;
    s.marks.add(ball);
    e.balls.push(ball);
  }
  e.balls.forEach((ball, i) => {
    ball.material = material;
    ball.scale.setScalar(m.kind === "stroke" ? radius * 0.6 : radius);
    ball.position.copy(lpsToGltf(points[i]));
  });
  setLabel(s, e, m.text || "", colour, e.balls[0].position, size);
}

// Materials of colours no mark shows now: disposed (their program stays: the marks in use share it).
function pruneMaterials(s) {
  const used = new Set();
  for (const e of s.shown.values()) for (const b of e.balls) used.add(b.material);
  for (const [colour, material] of s.materials) {
    if (!used.has(material)) { material.dispose(); s.materials.delete(colour); }
  }
}

// A mark's text beside it: white on dark with the mark's colour as its edge, as on the video.
// The sprite (and its material) is kept; only its texture is drawn again when the text changes.
function setLabel(s, e, text, colour, at, size) {
  if (!text) {
    if (e.label) { s.marks.remove(e.label); s.spare.push(e.label); e.label = null; e.labelKey = ""; }
    return;
  }
  const texture = e.labelKey === `${colour}\n${text}` ? null : labelTexture(text, colour);
  if (!e.label) {
    e.label = s.spare.pop() || newLabel(texture);
    s.marks.add(e.label);
  }
  if (texture) {
    const old = e.label.material.map;
    if (old !== texture) { e.label.material.map = texture; old.dispose(); }
    const img = texture.image, h = size / 22;
    e.label.scale.set((h * img.width) / img.height, h, 1);
    e.labelKey = `${colour}\n${text}`;
  }
  e.label.position.copy(at);
}

function newLabel(texture) {
  const sprite = new Sprite(new SpriteMaterial({ map: texture, depthTest: false, transparent: true }));
  sprite.center.set(-0.08, -0.3); // up and to the right of the mark
  sprite.renderOrder = 3;
  return sprite;
}

function labelTexture(text, colour) {
  const c = document.createElement("canvas");
  const g = c.getContext("2d");
  const font = "600 28px system-ui, sans-serif";
  g.font = font;
  c.width = Math.ceil(g.measureText(text).width) + 20;
  c.height = 40;
  g.font = font; // resizing the canvas reset it
  g.fillStyle = "rgba(0, 0, 0, 0.75)"; g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = colour; g.lineWidth = 4; g.strokeRect(2, 2, c.width - 4, c.height - 4);
  g.fillStyle = "#fff"; g.textBaseline = "middle"; g.fillText(text, 10, c.height / 2 + 1);
  return new CanvasTexture(c);
}

// -- the headset's viewpoint: P_image_model = K [R | t] maps model mm to pixels ---------------
function inverse3(a) {
  const [[a0, a1, a2], [b0, b1, b2], [c0, c1, c2]] = a;
  const det = a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0);
  if (!Number.isFinite(det) || Math.abs(det) < 1e-12) return null;
  return [
    [(b1 * c2 - b2 * c1) / det, (a2 * c1 - a1 * c2) / det, (a1 * b2 - a2 * b1) / det],
    [(b2 * c0 - b0 * c2) / det, (a0 * c2 - a2 * c0) / det, (a2 * b0 - a0 * b2) / det],
    [(b0 * c1 - b1 * c0) / det, (a1 * c0 - a0 * c1) / det, (a0 * b1 - a1 * b0) / det],
  ];
}
const mul3 = (m, v) => m.map((r) => r[0] * v[0] + r[1] * v[1] + r[2] * v[2]);

// The camera centre and its image corners at depth w (mm) in model mm, from P: X = M^-1 (w [u, v, 1] - p4).
function frustumOf(P, cam, depthMm) {
  const Minv = inverse3(P.map((r) => r.slice(0, 3)));
  if (!Minv) return null;
  const p4 = P.map((r) => r[3]);
  const centre = mul3(Minv, p4.map((x) => -x));
  const corners = [[0, 0], [cam.width, 0], [cam.width, cam.height], [0, cam.height]].map(([u, v]) =>
    mul3(Minv, [u * depthMm - p4[0], v * depthMm - p4[1], depthMm - p4[2]]));
  return { centre_mm: centre, corners_mm: corners };
}

// Made once, hidden until there is a pose: a new pose moves its points, a new status recolours it.
function makeFrustum(s) {
  const lines = new LineSegments(
    new BufferGeometry().setFromPoints(Array.from({ length: FRUSTUM_POINTS }, () => new Vector3())),
    new LineBasicMaterial({ color: STATUS_COLOURS.lost }),
  );
  lines.frustumCulled = false; // its bounding sphere is not recomputed as it moves
  const eye = new Mesh(s.ball, new MeshBasicMaterial({ color: STATUS_COLOURS.lost }));
  s.frustum.add(lines, eye);
  s.frustum.visible = false;
  Object.assign(s, { lines, eye });
}

function showFrustum(s, P, tracking) {
  view.frustum = null;
  s.frustum.visible = false;
  s.dirty = true;
  if (!P || !s.box) return;
  const cam = (window.mentor && window.mentor.camera) || { width: 640, height: 480 };
  const centreM = s.box.getCenter(new Vector3());
  // A small pyramid at the headset camera (its field of view drawn to the anatomy would fill
  // the view), and its optical axis out to the depth of the model's centre.
  const f0 = frustumOf(P, cam, 1);
  if (!f0) return;
  const distance = lpsToGltf(f0.centre_mm).distanceTo(centreM) * 1000;
  const f = frustumOf(P, cam, Math.min(60, distance / 3));
  const axis = frustumOf(P, cam, distance);
  view.frustum = f;
  const c = lpsToGltf(f.centre_mm), k = f.corners_mm.map(lpsToGltf);
  const segs = [];
  for (let i = 0; i < 4; i += 1) segs.push(c, k[i], k[i], k[(i + 1) % 4]);
  const mid = (q) => q.reduce((a, b) => a.add(b), new Vector3()).multiplyScalar(0.25);
  segs.push(mid(k), mid(axis.corners_mm.map(lpsToGltf)));
  const position = s.lines.geometry.getAttribute("position");
  segs.forEach((v, i) => position.setXYZ(i, v.x, v.y, v.z));
  position.needsUpdate = true;
  const colour = STATUS_COLOURS[tracking] ?? STATUS_COLOURS.lost;
  s.lines.material.color.setHex(colour);
  s.eye.material.color.setHex(colour);
  s.eye.position.copy(c);
  s.eye.scale.setScalar(s.box.getSize(new Vector3()).length() / 80);
  s.frustum.visible = true;
}

// -- clicks on the model -> marks ------------------------------------------------------------
function pick(s, ui, clientX, clientY) {
  const r = ui.canvas.getBoundingClientRect();
  const ndc = new Vector2(((clientX - r.left) / r.width) * 2 - 1, -((clientY - r.top) / r.height) * 2 + 1);
  const ray = new Raycaster();
  ray.setFromCamera(ndc, s.camera);
  const hit = ray.intersectObject(s.model, true)[0];
  return hit ? gltfToLps(hit.point) : null;
}

function placeMark(pointMm) {
  const state = window.mentor;
  if (!state.mayAnnotate) return "Observers cannot mark.";
  const tool = document.querySelector("input[name=tool]:checked");
  const kind = tool && tool.value === "label" ? "label" : "point";
  if (tool && (tool.value === "stroke" || tool.value === "erase")) return `In the 3D view: point or label only (${tool.value} is for the video).`;
  const colour = $("colour");
  const msg = {
    type: "annotate",
    cid: `3d-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    kind,
    point_model_mm: pointMm.map((c) => Math.round(c * 100) / 100),
    color: colour ? colour.value : "#ffcc00",
  };
  if (kind === "label") msg.text = ($("labeltext") && $("labeltext").value) || "label";
  view.sent.push(msg);
  state.send(msg);
  return "";
}

// Screen (client) coordinates where a model point (LPS mm) shows in the 3D view: tests click there.
function screenOf(s, ui, pointMm) {
  const v = lpsToGltf(pointMm).project(s.camera);
  const r = ui.canvas.getBoundingClientRect();
  return { x: r.left + ((v.x + 1) / 2) * r.width, y: r.top + ((1 - v.y) / 2) * r.height, inView: Math.abs(v.z) <= 1 };
}

// -- start ------------------------------------------------------------------------------
function waitForJoin(ui) { // the model is fetched with the page's token once the config call said who we are
  return new Promise((resolve) => {
    const tick = () => {
      const state = window.mentor;
      if (state && state.role && state.fetch) { resolve(state); return; }
      if (state && ["refused", "expired", "ended", "unreachable"].includes(state.phase)) say(ui, "3D view: waiting to join the session.", "bad");
      setTimeout(tick, 200);
    };
    tick();
  });
}

// The scene with the model in it, or null (said on the panel). The WebGL context too is made
// only after the first video frame: in software graphics it takes the main thread as well.
async function load(ui) {
  await waitForVideo(await waitForJoin(ui));
  let s;
  try { s = makeScene(ui); } catch (e) {
    view.error = "no WebGL";
    say(ui, "3D view unavailable: this browser has no WebGL.", "bad");
    return null;
  }
  try {
    const gltf = await parseGlb(await fetchModel());
    Object.assign(view, addModel(s, gltf));
  } catch (e) {
    view.error = String(e.message || e);
    say(ui, `3D view: the model could not be loaded (${view.error}).`, "bad");
    return null;
  }
  home(s);
  resize(s, ui);
  // The marks' and the frustum's programs are linked now, with the model's, not at the
  // mentor's first mark or the headset's first pose.
  const probe = new Mesh(s.ball, markMaterial(s, DEFAULT_COLOUR));
  s.marks.add(probe);
  s.frustum.visible = true;
  s.renderer.compile(s.scene, s.camera);
  s.frustum.visible = false;
  s.marks.remove(probe);
  view.programs = s.renderer.info.programs.length;
  return s;
}

function listen(s, ui, schedule) { // the mentor's drags, clicks and buttons
  s.controls.addEventListener("change", () => { s.dirty = true; schedule(); });
  s.controls.addEventListener("start", () => { s.moved = true; }); // the mentor's own view: kept
  ui.reset.addEventListener("click", () => { home(s); schedule(); });
  ui.seeBox.addEventListener("change", () => {
    for (const o of s.opaque) { o.material.transparent = ui.seeBox.checked; o.material.opacity = ui.seeBox.checked ? 0.3 : 1; o.material.depthWrite = !ui.seeBox.checked; o.material.needsUpdate = true; }
    s.dirty = true;
    schedule();
  });
  let down = null;
  ui.canvas.addEventListener("pointerdown", (ev) => { down = { x: ev.clientX, y: ev.clientY }; });
  ui.canvas.addEventListener("pointerup", (ev) => {
    if (!down || Math.hypot(ev.clientX - down.x, ev.clientY - down.y) > CLICK_SLOP_PX) { down = null; return; }
    down = null;
    const p = pick(s, ui, ev.clientX, ev.clientY);
    const why = p ? placeMark(p) : "No anatomy there: click on the model.";
    if (why) say(ui, why, "fair");
  });
}

function follower(s, ui, schedule) { // the page's marks, pose and tracking, read 10 times a second
  const seen = { marks: null, P: undefined, tracking: null, key: "" };
  return () => {
    const state = window.mentor;
    resize(s, ui);
    let told = false;
    if (state.marks !== seen.marks) {
      seen.marks = state.marks;
      const key = marksKey(state.marks);
      if (key !== seen.key) { seen.key = key; showMarks(s, state.marks); told = true; }
    }
    const tracking = Date.now() - (state.statusAt || 0) > 1500 ? "lost" : state.tracking;
    if (state.projection !== seen.P || tracking !== seen.tracking) {
      seen.P = state.projection; seen.tracking = tracking;
      const first = !view.frustum;
      showFrustum(s, state.projection, tracking);
      if (first && view.frustum && !s.moved) home(s); // fit the headset in too, once
      view.tracking = tracking;
      told = true;
    }
    if (told) {
      const n = Object.keys(view.marks).length;
      say(ui, `Headset: ${tracking}${state.projection ? "" : " (no pose yet)"} · ${n} mark${n === 1 ? "" : "s"} on the model`,
        tracking === "tracking" ? "good" : tracking === "degraded" ? "fair" : "bad");
    }
    if (s.dirty) schedule();
  };
}

// The view torn down (the page left): everything it gave the GPU, once.
function dispose(s) {
  const labels = [...s.spare];
  for (const e of s.shown.values()) if (e.label) labels.push(e.label);
  for (const l of labels) { l.material.map.dispose(); l.material.dispose(); }
  for (const m of s.materials.values()) m.dispose();
  s.model.traverse((o) => { if (o.isMesh) { o.geometry.dispose(); o.material.dispose(); } });
  s.lines.geometry.dispose(); s.lines.material.dispose(); s.eye.material.dispose(); s.ball.dispose();
  s.controls.dispose();
  s.renderer.dispose();
}

async function start() {
  const ui = panel();
  const s = await load(ui);
  if (!s) return;
  view.loaded = true;
  view.screenOf = (p) => screenOf(s, ui, p);
  view.pick = (x, y) => pick(s, ui, x, y);
  // Drawn only when something changed (a drag, new marks, a new pose), not at the display's
  // rate: an idle 3D view costs the mentor's machine next to nothing.
  // A moving headset redraws at most every LAZY_MS: without a GPU (software WebGL) a draw
  // holds the page's main thread for milliseconds, and clicks on the video wait behind it;
  // a drag of the view itself is drawn at once.
  const LAZY_MS = 250;
  let queued = false, timer = null, last = 0, later = null;
  const paint = () => {
    queued = false;
    if (!s.dirty || !timer) return;
    s.dirty = false;
    last = performance.now();
    s.renderer.render(s.scene, s.camera);
    view.renders += 1;
    view.programs = s.renderer.info.programs.length;
  };
  const schedule = () => { if (!queued) { queued = true; requestAnimationFrame(paint); } };
  const lazy = () => {
    if (later) return;
    later = setTimeout(() => { later = null; schedule(); }, Math.max(0, last + LAZY_MS - performance.now()));
  };
  listen(s, ui, schedule);
  const sync = follower(s, ui, lazy);
  sync();
  timer = setInterval(sync, 100);
  view.dispose = () => { if (timer) { clearInterval(timer); timer = null; dispose(s); } };
  window.addEventListener("pagehide", (ev) => { if (!ev.persisted) view.dispose(); });
}

start();
