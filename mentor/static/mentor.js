// scrubin mentor page: live headset video, voice, and marks anchored on the patient.
// Plain script, no framework. The token comes in the URL fragment (never sent to servers)
// and is kept in this tab's sessionStorage: a reload keeps the session, the address bar
// never shows the token, and requests carry it in a header (not in any URL).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const session = decodeURIComponent(location.pathname.split("/")[2] || "");
  const TOKEN_KEY = `scrubin.mentor.token.${session}`;
  const token = takeToken();

  function takeToken() {
    const link = new URLSearchParams(location.hash.slice(1));
    let t = link.get("token") || "";
    try {
      if (link.has("token")) { // a link (even with an empty token) wins over the one kept for this tab
        if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
      } else t = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) { /* storage blocked: the link's token only */ }
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
    return t;
  }

  const RESEND_MS = 1000;
  const ICE_TIMEOUT_MS = 5000;
  const CONNECT_TIMEOUT_MS = 10000; // answer received but ICE never connects: try again
  const STATUS_STALE_MS = 1500;
  const STALL_MS = 1000; // no new frame for this long: the video is shown as stalled
  const AUTHOR_COLOURS = ["#ffcc00", "#33e0ff", "#ff5fd2", "#8dff5a", "#ff9a3c", "#c3a6ff", "#5affc8", "#ffffff"];

  const state = {
    session, role: null, name: null, mayAnnotate: false, camera: { width: 640, height: 480 },
    conn: "starting", tracking: "lost", link: "-", quality: "high", error: null,
    frames: 0, lastRtp: null, lastFrameAt: 0, lastFramePerf: 0, marks: [], participants: [], acks: [], errors: [],
    pending: new Map(), sent: 0, resent: 0, statusAt: 0, rttMs: null, connectedAt: null, projection: null,
    phase: "joining", phaseDetail: "", phaseLog: [], stopped: false, attempts: 0, refusals: 0, dcOpen: false,
    toolsEnabled: false, undo: [], drawn: [], view: { z: 1, x: 0, y: 0 }, micMuted: false, confirming: null,
    retryMs: [1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000], // backoff; then stop and offer a button
  };
  window.mentor = state; // read by tests and by people debugging a session
  state.peer = () => pc;

  let pc = null;
  let dc = null;
  let retryTimer = null;
  let prevStats = null;
  let cidCounter = 0;
  const recentRtp = []; // timestamps of the last presented frames: the server finds the clicked frame with them
  const video = $("video");
  const overlay = $("overlay");
  const ctx = overlay.getContext("2d");

  // -- status bar ---------------------------------------------------------------------
  function show(id, text, cls) {
    const el = $(id);
    el.textContent = text;
    el.className = cls;
  }
  function notice(text) { $("notice").textContent = text; }

  // -- session life cycle: one phase at a time, said in the status bar and the banner -----
  const PHASES = {
    joining: ["joining", "fair", "Joining the session…"],
    live: ["live", "good", ""],
    stalled: ["video stalled", "fair", "Video stalled: no new frame for over a second. The picture, and the marks over it, may be out of date."],
    reconnecting: ["reconnecting", "fair", "Connection lost: reconnecting"],
    expired: ["link expired", "bad", "Your link has expired. This page has stopped trying to connect."],
    ended: ["session ended", "bad", "The session has ended."],
    refused: ["refused", "bad", "Cannot join"],
    unreachable: ["server unreachable", "bad", "The server cannot be reached"],
  };
  const ACTIONS = { expired: "Ask for a new link", ended: "Try to rejoin", unreachable: "Retry now", reconnecting: "Retry now" };
  function setPhase(phase, detail = "") {
    if (phase === state.phase && detail === state.phaseDetail) return;
    if (phase !== state.phase) notice(""); // a notice belongs to the state it was said in
    state.phase = phase;
    state.phaseDetail = detail;
    state.phaseLog.push({ at: Date.now(), perf: performance.now(), phase, detail });
    const [word, cls, text] = PHASES[phase];
    show("phase", word, cls);
    const banner = $("banner");
    banner.hidden = phase === "live";
    banner.className = cls;
    const said = !detail || phase === "expired" || detail === word; // the text says it already
    $("bannertext").textContent = said ? text : `${text} (${detail})`;
    const action = $("banneraction");
    action.hidden = !ACTIONS[phase];
    action.textContent = ACTIONS[phase] || "";
    if (phase !== "expired") $("bannerhelp").hidden = true;
    $("stage").classList.toggle("stalled", phase === "stalled");
    $("stage").classList.toggle("offline", !["live", "stalled", "joining"].includes(phase));
    updateTools();
  }
  $("banneraction").addEventListener("click", () => {
    if (state.phase === "expired") {
      const help = $("bannerhelp");
      help.textContent = `Ask the person who sent you this link (the theatre team) for a new mentor link for session "${session}", then open it in this tab.`;
      help.hidden = false;
    } else if (state.phase === "reconnecting") {
      clearTimeout(retryTimer); retryTimer = null; rejoin();
    } else { // ended or unreachable: one more round of tries, on request
      state.stopped = false; state.attempts = 0; rejoin();
    }
  });
  function updateTools() { // marks only when one can be sent now
    const ok = Boolean(state.mayAnnotate && state.dcOpen && !state.stopped);
    state.toolsEnabled = ok;
    $("tools").disabled = !ok;
    document.querySelectorAll("#marks button.erase-one").forEach((b) => { b.disabled = !ok; });
    if (!ok) { hideConfirm(); stroke = null; }
  }

  function refreshStatus() {
    const c = state.conn;
    show("conn", c, c === "connected" ? "good" : c === "connecting" || c === "new" ? "fair" : "bad");
    const stale = Date.now() - state.statusAt > STATUS_STALE_MS;
    const t = stale ? "unknown (no status)" : state.tracking;
    show("tracking", t, t === "tracking" ? "good" : t === "degraded" ? "fair" : "bad");
    const l = state.link.split(" ")[0];
    show("link", state.link, l === "good" ? "good" : l === "fair" ? "fair" : "bad");
  }
  setInterval(() => { refreshStatus(); watchVideo(); }, 250);

  // -- HTTP -----------------------------------------------------------------------------
  async function post(path, body) {
    let r;
    try {
      r = await fetch(`/s/${encodeURIComponent(session)}/${path}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify(body || {}),
        signal: AbortSignal.timeout(10000),
      });
    } catch (e) { // no answer at all: down or unreachable, worth another try later
      throw Object.assign(new Error("no answer from the server"), { status: 0, code: "unreachable" });
    }
    const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw Object.assign(new Error(data.error || `HTTP ${r.status}`), { status: r.status, code: data.code || null });
    return data;
  }
  // A GET of a session resource with the token in its header (the 3D view's model.glb).
  state.fetch = (path, init = {}) => fetch(`/s/${encodeURIComponent(session)}/${path}`,
    { ...init, headers: { ...(init.headers || {}), Authorization: `Bearer ${token}` } });

  // -- connection -----------------------------------------------------------------------
  function waitIce(peer) {
    if (peer.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("ICE gathering timed out")), ICE_TIMEOUT_MS);
      peer.addEventListener("icegatheringstatechange", () => {
        if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  let micStream = null; // asked for once per page: a reconnect reuses it
  async function microphone() {
    if (!state.mayAnnotate || !navigator.mediaDevices) { showMic("off", state.mayAnnotate ? "no microphone" : "observers listen only"); return null; }
    if (micStream) return micStream;
    try {
      micStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (e) {
      showMic("off", `no microphone: ${e.name}`);
      return null;
    }
    micStream.getAudioTracks().forEach((t) => { t.enabled = !state.micMuted; });
    meterMic(micStream);
    showMic(state.micMuted ? "muted" : "on");
    return micStream;
  }

  async function connect(config) {
    const peer = new RTCPeerConnection({ iceServers: config.ice_servers });
    pc = peer;
    peer.addTransceiver("video", { direction: "recvonly" });
    const mic = await microphone();
    if (mic) mic.getAudioTracks().forEach((t) => peer.addTrack(t, mic));
    else peer.addTransceiver("audio", { direction: "recvonly" }); // still hear the theatre
    state.voice = Boolean(mic);
    const channel = peer.createDataChannel("mentor", { ordered: true });
    channel.onopen = () => { // the level may have changed (auto, or the mentor) while connecting
      if (pc !== peer) return;
      state.dcOpen = true;
      state.attempts = 0;
      resendAll();
      channel.send(JSON.stringify({ type: "quality", level: state.quality }));
      setPhase("live");
    };
    channel.onclose = () => {
      if (pc !== peer) return; // an old connection, closed on purpose
      state.dcOpen = false;
      connectionLost("the data channel closed");
    };
    channel.onmessage = (ev) => { if (pc === peer) onMessage(JSON.parse(ev.data)); };
    dc = channel;
    peer.ontrack = (ev) => {
      if (ev.track.kind === "audio") { // the headset's microphone, when it sends one
        $("theatre").srcObject = new MediaStream([ev.track]);
        state.theatreAudio = true;
        return;
      }
      if (ev.track.kind !== "video") return;
      // Live guidance: ask for the smallest jitter buffer rather than smooth playback.
      if ("jitterBufferTarget" in ev.receiver) ev.receiver.jitterBufferTarget = 0;
      else if ("playoutDelayHint" in ev.receiver) ev.receiver.playoutDelayHint = 0;
      video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    };
    let interrupted = null;
    peer.onconnectionstatechange = () => {
      if (pc !== peer) return;
      state.conn = peer.connectionState;
      if (state.conn === "connected") state.connectedAt = performance.now();
      clearTimeout(interrupted);
      // "disconnected" may heal by itself; if it lasts, or the connection failed, start again.
      if (state.conn === "disconnected") interrupted = setTimeout(() => connectionLost("connection interrupted"), 3000);
      if (state.conn === "failed" || state.conn === "closed") connectionLost(`connection ${state.conn}`);
    };
    await peer.setLocalDescription(await peer.createOffer());
    await waitIce(peer);
    const answer = await post("offer", { type: "offer", sdp: peer.localDescription.sdp, quality: state.quality });
    if (pc !== peer) return; // given up or replaced meanwhile
    await peer.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    state.participant = answer.participant;
    setTimeout(() => { if (pc === peer && !state.dcOpen) connectionLost("no connection within 10 s"); }, CONNECT_TIMEOUT_MS);
  }

  function closePeer() {
    const old = pc;
    pc = null; dc = null; state.dcOpen = false;
    try { if (old) old.close(); } catch (e) { /* already closed */ }
  }
  function forgetPeople() { // not connected: nobody is known to be here (the server resends the list)
    state.participants = [];
    $("people").replaceChildren();
  }
  function connectionLost(why) {
    if (state.stopped || retryTimer) return;
    state.errors.push(why);
    closePeer();
    forgetPeople();
    state.conn = "reconnecting";
    scheduleRetry(why);
  }
  function scheduleRetry(why) { // bounded, with backoff: a server that is gone is not polled for ever
    if (state.stopped || retryTimer) return;
    const delays = state.retryMs;
    if (state.attempts >= delays.length) { finish("unreachable", `${why}; gave up after ${state.attempts} tries`); return; }
    const delay = delays[state.attempts];
    state.attempts += 1;
    setPhase("reconnecting", `${why}; try ${state.attempts} of ${delays.length} in ${Math.ceil(delay / 1000)} s`);
    retryTimer = setTimeout(() => { retryTimer = null; rejoin(); }, delay);
  }
  async function rejoin() { // the token first: an expired or refused link stops here, before any offer
    if (state.stopped) return;
    closePeer();
    state.conn = "reconnecting";
    try {
      applyConfig(await post("config"));
      await connect(state.config);
    } catch (e) {
      state.errors.push(String(e));
      if (!finalAnswer(e)) scheduleRetry(e.message);
    }
  }
  function finalAnswer(e) { // a refusal the server will repeat: say why and stop retrying
    if (e.status === 401) state.refusals += 1;
    if (e.code === "token_expired") finish("expired", e.message);
    else if (e.status === 401) finish("refused", e.message);
    else if (e.status === 404 && state.config) finish("ended", "the server no longer serves this session");
    else if (e.status === 404) finish("refused", `${e.message}: check the link`);
    else return false;
    return true;
  }
  function finish(phase, detail) { // final: nothing more is sent, nothing is retried
    state.stopped = true;
    clearTimeout(retryTimer); retryTimer = null;
    const unsent = state.pending.size;
    state.pending.clear();
    closePeer();
    state.conn = phase === "expired" || phase === "refused" ? "refused" : "closed";
    state.error = detail;
    forgetPeople();
    Object.assign(state, { link: "-", tracking: "lost", statusAt: 0 }); // nothing current to report
    if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; } // the microphone is released
    showMic("off", "not connected");
    setPhase(phase, detail);
    draw(); // no marks floating over a dead picture
    refreshStatus();
    if (unsent) notice(`${unsent} mark${unsent > 1 ? "s were" : " was"} not sent.`);
  }
  state.finish = finish;
  state.retryPending = () => retryTimer !== null;

  function applyConfig(config) {
    const first = !state.config;
    Object.assign(state, { config, role: config.role, name: config.name, mayAnnotate: config.may_annotate, camera: config.camera });
    $("me").textContent = `${config.name} (${config.role})`;
    $("rolehint").textContent = config.may_annotate ? "" : "Observer: you can watch and listen; marking is for mentors.";
    $("stage").style.aspectRatio = `${config.camera.width} / ${config.camera.height}`;
    if (first) $("colour").value = authorColour(config.name);
    if (first) resize();
  }

  async function start() {
    $("sessionname").textContent = session ? `· ${session}` : "";
    setPhase("joining");
    if (!token) { finish("refused", "this link has no token: open the full link you were sent"); return; }
    try {
      applyConfig(await post("config"));
    } catch (e) {
      state.errors.push(String(e));
      if (!finalAnswer(e)) scheduleRetry(e.message);
      return;
    }
    try { await connect(state.config); } catch (e) {
      state.errors.push(String(e));
      if (!finalAnswer(e)) connectionLost(e.message);
    }
  }

  // -- video frames ---------------------------------------------------------------------
  function onFrame(now, meta) {
    state.frames += 1;
    state.lastRtp = meta.rtpTimestamp ?? null;
    if (state.lastRtp !== null) { recentRtp.push(state.lastRtp); if (recentRtp.length > 8) recentRtp.shift(); }
    state.lastFrameAt = now;
    state.lastFramePerf = performance.now();
    state.frameWidth = meta.width;
    video.requestVideoFrameCallback(onFrame);
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onFrame);

  function watchVideo() { // live <-> stalled: no new frame for STALL_MS while connected
    if (state.stopped || !state.dcOpen || !["live", "stalled"].includes(state.phase)) return;
    const since = Math.max(state.lastFramePerf, state.connectedAt || 0);
    const stalled = state.quality !== "none" && performance.now() - since > STALL_MS;
    if (stalled !== (state.phase === "stalled")) setPhase(stalled ? "stalled" : "live", stalled && !state.frames ? "no video yet" : "");
  }

  state.samplePixel = (x, y) => { // decoded pixel at video (x, y), through a canvas
    const c = document.createElement("canvas");
    c.width = video.videoWidth; c.height = video.videoHeight;
    if (!c.width) return null;
    const g = c.getContext("2d", { willReadFrequently: true });
    g.drawImage(video, 0, 0);
    return Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3));
  };

  // -- geometry: camera pixels <-> overlay ----------------------------------------------
  // The video shows at the largest size its box allows (object-fit: contain), then zoomed
  // and panned (state.view: zoom z, pan x/y in canvas px); the canvas is not transformed, so
  // marks and labels stay crisp and every mapping goes through fit().
  const view = state.view;
  function fit() {
    const w = overlay.width, h = overlay.height, cw = state.camera.width, ch = state.camera.height;
    const s = Math.min(w / cw, h / ch);
    return { s: s * view.z, ox: ((w - cw * s) / 2) * view.z + view.x, oy: ((h - ch * s) / 2) * view.z + view.y };
  }
  function applyView() {
    const w = overlay.width, h = overlay.height, k = canvasScale();
    view.z = Math.min(8, Math.max(1, view.z));
    view.x = Math.min(0, Math.max(w * (1 - view.z), view.x));
    view.y = Math.min(0, Math.max(h * (1 - view.z), view.y));
    video.style.transform = view.z === 1 ? "" : `translate(${view.x / k}px, ${view.y / k}px) scale(${view.z})`;
    $("zoomreset").textContent = view.z === 1 ? "Zoom 1:1" : `Zoom ${view.z.toFixed(1)}x`;
    draw();
  }
  function zoomAt(z, cx = overlay.width / 2, cy = overlay.height / 2) { // keeps the point under (cx, cy) there
    const nz = Math.min(8, Math.max(1, z));
    view.x = cx - (nz * (cx - view.x)) / view.z;
    view.y = cy - (nz * (cy - view.y)) / view.z;
    view.z = nz;
    applyView();
  }
  function panBy(dx, dy) { view.x += dx; view.y += dy; applyView(); }
  state.zoom = (z, cx, cy) => zoomAt(z, cx, cy);
  function canvasScale() { return overlay.width / (overlay.clientWidth || overlay.width); } // canvas px per CSS px
  function toCamera(clientX, clientY) {
    const r = overlay.getBoundingClientRect();
    const f = fit();
    const x = (clientX - r.left) * (overlay.width / r.width), y = (clientY - r.top) * (overlay.height / r.height);
    return [(x - f.ox) / f.s - 0.5, (y - f.oy) / f.s - 0.5];
  }
  function toCanvas(u, v) { const f = fit(); return [f.ox + (u + 0.5) * f.s, f.oy + (v + 0.5) * f.s]; }
  state.screenPoint = (u, v) => { // client coordinates of camera pixel (u, v)
    const r = overlay.getBoundingClientRect();
    const [x, y] = toCanvas(u, v);
    return { x: r.left + x * (r.width / overlay.width), y: r.top + y * (r.height / overlay.height) };
  };
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(overlay.clientWidth * dpr) || 640, h = Math.round(overlay.clientHeight * dpr) || 480;
    if (w !== overlay.width || h !== overlay.height) {
      const fx = w / overlay.width, fy = h / overlay.height;
      overlay.width = w; overlay.height = h;
      view.x *= fx; view.y *= fy;
    }
    applyView();
  }
  window.addEventListener("resize", resize);
  if ("ResizeObserver" in window) new ResizeObserver(resize).observe($("stage"));

  // -- drawing --------------------------------------------------------------------------
  // Anchored marks are re-projected here with the newest status's P_image_model (3x4, model
  // mm -> image pixels), so the server sends the marks only when they change.
  function project(P, p) {
    const r = (i) => P[i][0] * p[0] + P[i][1] * p[1] + P[i][2] * p[2] + P[i][3];
    const w = r(2);
    if (!(w > 1e-6)) return [0, 0, false];
    const u = r(0) / w, v = r(1) / w;
    const inside = u >= -0.5 && u <= state.camera.width - 0.5 && v >= -0.5 && v <= state.camera.height - 0.5;
    return [u, v, inside];
  }
  function markUv(m) {
    return m.anchored && m.points_mm && state.projection ? m.points_mm.map((p) => project(state.projection, p)) : m.uv;
  }
  state.markUv = (id) => { const m = state.marks.find((x) => x.id === id); return m ? markUv(m) : null; };
  // Each mark: its shape over a dark halo (visible on skin and drapes alike), dashed when
  // not anchored; its tag in a dark box with a coloured edge, outlined text, moved to the
  // first free spot around the mark so tags do not cover each other. state.drawn keeps
  // where each mark is drawn now: erase hit-tests against that. state.markLook(m), when
  // set (the 3D view's occlusion test), may return {hidden, alpha, dash} for a mark.
  function shape(m, pts, colour, width, dash) {
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.setLineDash(dash);
    ctx.beginPath();
    if (m.kind === "stroke") pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    else ctx.arc(pts[0][0], pts[0][1], 6 * canvasScale(), 0, 2 * Math.PI);
    ctx.stroke();
  }
  function tagOf(m) { return [m.text || "", m.anchored ? "" : "(2D)"].filter(Boolean).join(" "); }
  function overlaps(a, b) { return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h; }
  function placeTag(x, y, w, h, k, taken) {
    const d = 10 * k, step = h + 3 * k, spots = [];
    for (let n = 0; n < 4; n += 1) {
      spots.push([x + d, y - d - h - n * step], [x + d, y + d + n * step], [x - d - w, y - d - h - n * step], [x - d - w, y + d + n * step]);
    }
    const boxes = spots.map(([bx, by]) => ({ x: bx, y: by, w, h }))
      .filter((b) => b.x >= 0 && b.y >= 0 && b.x + b.w <= overlay.width && b.y + b.h <= overlay.height);
    return boxes.find((b) => !taken.some((t) => overlaps(b, t))) || boxes[0] || { x: x + d, y: y - d - h, w, h };
  }
  function drawTag(m, [x, y], k, taken) {
    const tag = tagOf(m);
    if (!tag) return null;
    ctx.font = `600 ${Math.round(15 * k)}px system-ui, sans-serif`;
    const w = ctx.measureText(tag).width + 10 * k, h = 21 * k;
    const box = placeTag(x, y, w, h, k, taken);
    ctx.setLineDash([]);
    if (Math.abs(box.y + h / 2 - y) > h + 10 * k) { // moved away: a leader line back to the mark
      ctx.strokeStyle = m.color; ctx.lineWidth = 1.5 * k;
      ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(box.x + (box.x > x ? 0 : w), box.y + h / 2); ctx.stroke();
    }
    ctx.fillStyle = "rgba(0, 0, 0, 0.72)";
    ctx.fillRect(box.x, box.y, w, h);
    ctx.strokeStyle = m.color; ctx.lineWidth = 2 * k;
    ctx.strokeRect(box.x, box.y, w, h);
    ctx.textBaseline = "middle";
    ctx.lineJoin = "round"; ctx.lineWidth = 3 * k; ctx.strokeStyle = "#000";
    ctx.strokeText(tag, box.x + 5 * k, box.y + h / 2);
    ctx.fillStyle = "#fff";
    ctx.fillText(tag, box.x + 5 * k, box.y + h / 2);
    taken.push(box);
    return box;
  }
  function draw() {
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    state.drawn = [];
    if (state.stopped) return; // no marks floating over a dead picture
    const k = canvasScale(), taken = [], shown = [];
    for (const m of state.marks) {
      const pts = markUv(m).filter((p) => p[2]).map((p) => toCanvas(p[0], p[1]));
      if (!pts.length) continue;
      const look = state.markLook ? state.markLook(m) || {} : {};
      if (look.hidden) continue;
      shown.push([m, pts, look]);
      pts.forEach(([x, y]) => taken.push({ x: x - 8 * k, y: y - 8 * k, w: 16 * k, h: 16 * k })); // tags avoid marks too
    }
    for (const [m, pts, look] of shown) {
      ctx.save();
      ctx.globalAlpha = look.alpha ?? 1;
      const dash = !m.anchored ? [6 * k, 4 * k] : look.dash || [];
      shape(m, pts, "rgba(0, 0, 0, 0.75)", 6 * k, dash);
      shape(m, pts, m.color, 3 * k, dash);
      if (m.id === highlighted) { ctx.setLineDash([]); ctx.strokeStyle = "#fff"; ctx.lineWidth = 2 * k; ctx.beginPath(); ctx.arc(pts[0][0], pts[0][1], 16 * k, 0, 2 * Math.PI); ctx.stroke(); }
      const box = drawTag(m, pts[0], k, taken);
      ctx.restore();
      state.drawn.push({ id: m.id, pts, box });
    }
    if (stroke) {
      ctx.strokeStyle = $("colour").value; ctx.lineWidth = 3 * k; ctx.setLineDash([]); ctx.beginPath();
      stroke.points.forEach(([u, v], i) => { const [x, y] = toCanvas(u, v); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
    }
    if (cursor && document.activeElement === overlay) { // the keyboard's crosshair
      const [x, y] = toCanvas(cursor[0], cursor[1]);
      ctx.setLineDash([]); ctx.lineWidth = 2 * k; ctx.strokeStyle = "#6cf";
      ctx.beginPath(); ctx.moveTo(x - 12 * k, y); ctx.lineTo(x + 12 * k, y); ctx.moveTo(x, y - 12 * k); ctx.lineTo(x, y + 12 * k); ctx.stroke();
    }
  }

  function authorColour(name) { // the same colour for a name on every page
    let h = 0;
    for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return AUTHOR_COLOURS[h % AUTHOR_COLOURS.length];
  }
  function clock(ms) {
    return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "";
  }
  function describe(m) {
    return `${m.kind}${m.text ? ` "${m.text}"` : ""} by ${m.author}: ${m.anchored ? "on the model" : `2D only (${m.reason})`}`;
  }
  let listedMarks = "";
  function listMarks() {
    // Marks arrive re-projected up to 10 times a second; the list only changes when marks
    // are added or erased, and rebuilding it each time kept the page's main thread (which
    // also takes the clicks) busy.
    const key = JSON.stringify([state.marks.map((m) => [m.id, describe(m), m.color]), highlighted]);
    if (key === listedMarks) return;
    listedMarks = key;
    $("marks").replaceChildren(...state.marks.map((m) => {
      const li = document.createElement("li");
      const pick = document.createElement("button");
      pick.type = "button"; pick.className = "mark"; pick.dataset.id = m.id;
      pick.textContent = `${clock(m.created_ms)} ${describe(m)}`.trim();
      if (!m.anchored) pick.title = `not anchored on the anatomy: ${m.reason}`;
      pick.setAttribute("aria-current", String(m.id === highlighted));
      pick.addEventListener("click", () => showMark(m.id));
      const del = document.createElement("button");
      del.type = "button"; del.className = "erase-one"; del.textContent = "Erase";
      del.setAttribute("aria-label", `Erase ${describe(m)}`);
      del.disabled = !state.toolsEnabled;
      del.addEventListener("click", () => { const cur = state.marks.find((x) => x.id === m.id); if (cur) requestErase(cur); });
      li.append(pick);
      if (!m.anchored && m.author === state.name) { // one's own 2D mark: try the model again, in today's picture
        const again = document.createElement("button");
        again.type = "button"; again.className = "erase-one"; again.textContent = "Anchor";
        again.title = "Place it again at the same screen spot in the current picture, on the model if the ray hits it";
        again.setAttribute("aria-label", `Anchor again: ${describe(m)}`);
        again.disabled = !state.toolsEnabled;
        again.addEventListener("click", () => { const cur = state.marks.find((x) => x.id === m.id); if (cur) reanchor(cur); });
        li.append(again);
      }
      li.append(del);
      return li;
    }));
    const authors = new Map();
    for (const m of state.marks) if (!authors.has(m.author)) authors.set(m.author, m.color);
    $("legend").replaceChildren(...[...authors].map(([author, colour]) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = colour;
      li.append(sw, `${author}${author === state.name ? " (you)" : ""}`);
      return li;
    }));
  }
  function showMark(id) { // from the list: ring the mark on the view and say where it is
    const m = state.marks.find((x) => x.id === id);
    if (!m) return;
    highlighted = id;
    const uv = markUv(m).find((p) => p[2]);
    notice(uv ? `${describe(m)}.` : `${describe(m)}: out of the camera's view now.`);
    draw(); listMarks();
  }
  state.showMark = showMark;

  // -- sending marks: acknowledged, re-sent until acknowledged, never doubled -----------
  function newCid() { cidCounter += 1; return `${Date.now().toString(36)}-${cidCounter}-${Math.random().toString(36).slice(2, 8)}`; }
  function send(msg, meta = {}) {
    const entry = { msg, meta, sentAt: performance.now() };
    state.pending.set(msg.cid, entry);
    transmit(entry);
    return msg.cid;
  }
  function transmit(entry) {
    if (dc && dc.readyState === "open") { dc.send(JSON.stringify(entry.msg)); entry.sentAt = performance.now(); state.sent += 1; }
  }
  function resendAll() { for (const e of state.pending.values()) { transmit(e); state.resent += 1; } }
  setInterval(() => {
    const now = performance.now();
    for (const e of state.pending.values()) if (now - e.sentAt > RESEND_MS) { transmit(e); state.resent += 1; }
  }, 250);
  state.send = send;

  function canMark() {
    if (!state.mayAnnotate) { notice("Observers cannot mark."); return false; }
    if (!state.toolsEnabled) { notice("Not connected: a mark cannot be sent now."); return false; }
    return true;
  }
  function frameRef() { return state.quality === "none" ? null : state.lastRtp; }
  function annotate(kind, uv, rtp) {
    const msg = { type: "annotate", cid: newCid(), kind, uv, color: $("colour").value, rtp_ts: rtp, rtp_recent: rtp === null ? [] : recentRtp.slice() };
    if (kind === "label") msg.text = $("labeltext").value.trim();
    return send(msg);
  }
  function reanchor(m) { // a new mark at the 2D mark's spot, in the current frame; the old one goes if it anchors
    if (!canMark()) return;
    const rtp = frameRef();
    const msg = { type: "annotate", cid: newCid(), kind: m.kind, uv: m.uv.map((p) => [p[0], p[1]]), color: m.color, rtp_ts: rtp, rtp_recent: rtp === null ? [] : recentRtp.slice() };
    if (m.text) msg.text = m.text;
    send(msg, { replaces: m.id });
  }
  function place(kind, u, v) { // a point or a label at camera pixel (u, v)
    if (kind === "label" && !$("labeltext").value.trim()) {
      notice("Type the label text first, then click where it goes.");
      $("labeltext").focus();
      return;
    }
    annotate(kind, [[u, v]], frameRef());
  }

  // -- erase and undo ---------------------------------------------------------------------
  function distToSegment(px, py, [ax, ay], [bx, by]) {
    const dx = bx - ax, dy = by - ay, len = dx * dx + dy * dy;
    const t = len ? Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / len)) : 0;
    return Math.hypot(px - ax - t * dx, py - ay - t * dy);
  }
  function markAt(x, y) { // canvas px: the mark drawn nearest, its tag included
    let best = null, bestD = 15 * canvasScale();
    for (const d of state.drawn) {
      let dist = d.pts.length > 1
        ? Math.min(...d.pts.slice(1).map((p, i) => distToSegment(x, y, d.pts[i], p)))
        : Math.hypot(x - d.pts[0][0], y - d.pts[0][1]);
      const b = d.box;
      if (b && x >= b.x && x <= b.x + b.w && y >= b.y && y <= b.y + b.h) dist = 0;
      if (dist < bestD) { best = d.id; bestD = dist; }
    }
    return best ? state.marks.find((m) => m.id === best) || null : null;
  }
  function eraseAt(x, y) {
    const m = markAt(x, y);
    if (m) requestErase(m); else notice("Nothing to erase there.");
  }
  function requestErase(m) { // another's mark: ask first; the server logs both names
    if (!canMark()) return;
    if (m.author === state.name) { send({ type: "erase", cid: newCid(), id: m.id }, { author: m.author }); return; }
    askConfirm(`Erase ${m.author}'s mark${m.text ? ` "${m.text}"` : ""}? It goes for everyone, the headset included, and the log names you both.`,
      () => send({ type: "erase", cid: newCid(), id: m.id }, { author: m.author }));
  }
  let confirmed = null;
  function askConfirm(text, then) {
    confirmed = then;
    state.confirming = text;
    $("confirmtext").textContent = text;
    $("confirm").hidden = false;
    $("confirmno").focus(); // the safe answer is the default
  }
  function hideConfirm() {
    confirmed = null; state.confirming = null;
    const box = $("confirm");
    if (!box.hidden) { box.hidden = true; if (box.contains(document.activeElement)) overlay.focus(); }
  }
  $("confirmyes").addEventListener("click", () => { const f = confirmed; hideConfirm(); if (f && canMark()) f(); });
  $("confirmno").addEventListener("click", () => { hideConfirm(); notice("Nothing erased."); });

  function undo() { // one's own last action: a placed mark goes, an erased mark comes back
    if (!canMark()) return;
    while (state.undo.length) {
      const last = state.undo.pop();
      if (last.type === "annotate" && state.marks.some((m) => m.id === last.id)) {
        send({ type: "erase", cid: newCid(), id: last.id }, { undo: true });
        return;
      }
      if (last.type === "erase" && !state.marks.some((m) => m.id === last.id)) {
        send({ type: "restore", cid: newCid(), id: last.id }, { undo: true });
        return;
      }
    }
    notice("Nothing of yours to undo.");
  }
  $("undo").addEventListener("click", undo);
  state.undoLast = undo;
  function acknowledged(m, entry) { // what an ack means depends on what it answers
    const msg = entry ? entry.msg : null, meta = entry ? entry.meta : {};
    if (!m.ok) { notice(`Refused: ${m.error}`); return; }
    if (m.duplicate || !msg) return;
    if (msg.type === "erase") {
      if (meta.quiet) return;
      if (!meta.undo) state.undo.push({ type: "erase", id: m.id });
      notice(meta.undo ? "Undone: your mark was removed." : `Mark erased${meta.author && meta.author !== state.name ? ` (${meta.author}'s)` : ""}. Undo: Z.`);
    } else if (msg.type === "restore") {
      notice("Undone: the mark is back.");
    } else if (meta.replaces) { // re-anchoring: keep whichever of the two is better, never both
      const gone = m.anchored ? meta.replaces : m.id;
      send({ type: "erase", cid: newCid(), id: gone }, { undo: true, quiet: true });
      if (m.anchored) state.undo.push({ type: "annotate", id: m.id });
      notice(m.anchored ? "Mark anchored on the model now." : `Still not anchored on the anatomy: ${m.reason}.`);
    } else {
      state.undo.push({ type: "annotate", id: m.id });
      notice(m.anchored ? "Mark placed on the model." : `Mark kept in 2D, not anchored on the anatomy: ${m.reason}.`);
    }
  }

  // -- pointer and keyboard input ---------------------------------------------------------
  let stroke = null;
  let highlighted = null; // a mark picked in the list
  let cursor = null; // the keyboard's crosshair, camera pixels
  function tool() { return document.querySelector("input[name=tool]:checked").value; }
  function canvasXY(ev) {
    const r = overlay.getBoundingClientRect();
    return [(ev.clientX - r.left) * (overlay.width / r.width), (ev.clientY - r.top) * (overlay.height / r.height)];
  }
  let panning = null;
  overlay.addEventListener("pointerdown", (ev) => {
    if (ev.button === 1 || (ev.button === 0 && ev.shiftKey)) { // middle button or shift-drag: pan
      panning = canvasXY(ev); overlay.setPointerCapture(ev.pointerId); ev.preventDefault(); return;
    }
    if (!canMark()) return;
    const [u, v] = toCamera(ev.clientX, ev.clientY);
    if (u < 0 || v < 0 || u >= state.camera.width || v >= state.camera.height) return;
    const t = tool();
    if (t === "stroke") { stroke = { points: [[u, v]], rtp: frameRef() }; overlay.setPointerCapture(ev.pointerId); }
    else if (t === "erase") eraseAt(...canvasXY(ev));
    else place(t, u, v);
  });
  overlay.addEventListener("pointermove", (ev) => {
    if (panning) { const [x, y] = canvasXY(ev); panBy(x - panning[0], y - panning[1]); panning = [x, y]; return; }
    if (!stroke) { // say why a 2D mark is 2D, where the pointer rests on it
      const m = state.drawn.length ? markAt(...canvasXY(ev)) : null;
      overlay.title = m && !m.anchored ? `${m.author}: not anchored on the anatomy: ${m.reason}` : "";
      return;
    }
    if (stroke.points.length >= 512) return;
    const [u, v] = toCamera(ev.clientX, ev.clientY);
    if (u >= 0 && v >= 0 && u < state.camera.width && v < state.camera.height) { stroke.points.push([u, v]); draw(); }
  });
  overlay.addEventListener("pointerup", () => {
    panning = null;
    if (stroke && stroke.points.length > 1 && state.toolsEnabled) annotate("stroke", stroke.points, stroke.rtp);
    stroke = null;
    draw();
  });
  $("stage").addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [x, y] = canvasXY(ev);
    zoomAt(view.z * (ev.deltaY < 0 ? 1.25 : 0.8), x, y);
  }, { passive: false });
  $("zoomin").addEventListener("click", () => zoomAt(view.z * 1.5));
  $("zoomout").addEventListener("click", () => zoomAt(view.z / 1.5));
  $("zoomreset").addEventListener("click", () => { view.z = 1; view.x = 0; view.y = 0; applyView(); });

  function toggleFullscreen() {
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    else $("viewport").requestFullscreen().catch((e) => notice(`Fullscreen refused by the browser: ${e.message}`));
  }
  $("fullscreen").addEventListener("click", toggleFullscreen);
  document.addEventListener("fullscreenchange", () => {
    $("fullscreen").firstChild.textContent = document.fullscreenElement ? "Exit fullscreen " : "Fullscreen ";
    resize();
  });

  const TOOL_KEYS = { p: "point", d: "stroke", t: "label", e: "erase" };
  function pickTool(name) {
    if ($("tools").disabled) return;
    const input = document.querySelector(`input[name=tool][value=${name}]`);
    input.checked = true;
    if (name === "label" && !$("labeltext").value.trim()) $("labeltext").focus();
    notice(`Tool: ${input.parentElement.textContent.trim().replace(/\s+\S$/, "")}.`);
  }
  function cursorKey(ev) { // with the view focused: arrows move the crosshair, Enter uses the tool there
    const step = ev.shiftKey ? 20 : 4;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    cursor = cursor || [state.camera.width / 2, state.camera.height / 2];
    if (moves[ev.key]) {
      cursor = [Math.min(state.camera.width - 1, Math.max(0, cursor[0] + moves[ev.key][0])), Math.min(state.camera.height - 1, Math.max(0, cursor[1] + moves[ev.key][1]))];
      draw();
      return true;
    }
    if (ev.key !== "Enter" && ev.key !== " ") return false;
    if (!canMark()) return true;
    const t = tool();
    if (t === "erase") eraseAt(...toCanvas(cursor[0], cursor[1]));
    else if (t === "stroke") notice("Freehand needs a pointer; use Point or Text label from the keyboard.");
    else place(t, cursor[0], cursor[1]);
    return true;
  }
  overlay.addEventListener("focus", draw);
  overlay.addEventListener("blur", draw);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { hideConfirm(); stroke = null; draw(); return; }
    const typing = ev.target.closest && ev.target.closest("input[type=text], textarea, select");
    if (typing || ev.altKey || ev.metaKey) return;
    const key = ev.key.toLowerCase();
    if (ev.ctrlKey) { if (key === "z") { ev.preventDefault(); undo(); } return; }
    if (ev.target === overlay && cursorKey(ev)) { ev.preventDefault(); return; }
    if (ev.target.closest && ev.target.closest("button, input, summary") && (ev.key === "Enter" || ev.key === " ")) return;
    const pans = { ArrowLeft: [40, 0], ArrowRight: [-40, 0], ArrowUp: [0, 40], ArrowDown: [0, -40] };
    if (TOOL_KEYS[key]) pickTool(TOOL_KEYS[key]);
    else if (key === "z") undo();
    else if (key === "f") toggleFullscreen();
    else if (key === "m") toggleMute();
    else if (key === "+" || key === "=") zoomAt(view.z * 1.5);
    else if (key === "-") zoomAt(view.z / 1.5);
    else if (key === "0") { view.z = 1; view.x = 0; view.y = 0; applyView(); }
    else if (pans[ev.key] && view.z > 1 && !ev.target.closest("input, select")) panBy(...pans[ev.key]);
    else return;
    ev.preventDefault();
  });

  // -- video quality: automatic (high, low on a weak link) or the mentor's own choice ----
  // Auto drops high -> low after 3 consecutive "poor" link grades (one a second) or 5
  // "fair"/"poor" ones, and goes back up only after 10 consecutive "good" ones, so a link near
  // a threshold does not flap. Auto never picks "none" (annotation-only): that is the mentor's
  // choice. state.quality is always a real level (high/low/none): the offer and the
  // {type: "quality", level} messages carry it, the server knows nothing of "auto".
  const AUTO_DOWN_POOR = 3, AUTO_DOWN_WEAK = 5, AUTO_UP_GOOD = 10;
  const AUTO_LABEL = "Auto (high, low on a weak link)";
  Object.assign(state, { autoQuality: true, autoRuns: { poor: 0, weak: 0, good: 0 }, qualityLog: [] });
  function setQuality(level, why, tell) {
    const changed = level !== state.quality;
    state.quality = level;
    $("novideo").hidden = level !== "none";
    video.hidden = level === "none";
    const autoText = state.autoQuality && level !== "high" ? `Auto: ${level} now (${why})` : AUTO_LABEL;
    $("quality").querySelector("option[value=auto]").textContent = autoText;
    if (changed) state.qualityLog.push({ at: Date.now(), level, auto: state.autoQuality, why });
    if ((changed || tell) && dc && dc.readyState === "open") dc.send(JSON.stringify({ type: "quality", level }));
  }
  function autoQualityStep(grade) { // one link grade; tests call it with made-up grades
    const r = state.autoRuns;
    r.poor = grade === "poor" ? r.poor + 1 : 0;
    r.weak = grade === "poor" || grade === "fair" ? r.weak + 1 : 0;
    r.good = grade === "good" ? r.good + 1 : 0;
    if (!state.autoQuality) return;
    if (state.quality === "high" && (r.poor >= AUTO_DOWN_POOR || r.weak >= AUTO_DOWN_WEAK)) {
      setQuality("low", "weak link");
      notice("Weak link: video switched to low quality (auto).");
    } else if (state.quality === "low" && r.good >= AUTO_UP_GOOD) {
      setQuality("high", "steady link");
      notice("Link steady again: video back to high quality (auto).");
    }
  }
  state.autoQualityStep = autoQualityStep;
  function chooseQuality(choice) { // the mentor's pick in the select
    state.autoQuality = choice === "auto";
    if (!state.autoQuality) setQuality(choice, "chosen", true);
    // Auto again: from annotation-only back to high; a low level stays until the link is good.
    else setQuality(state.quality === "none" ? "high" : state.quality, "until the link is good", true);
  }
  $("quality").addEventListener("change", (ev) => chooseQuality(ev.target.value));
  chooseQuality($("quality").value);

  // -- messages from the server ---------------------------------------------------------
  function onMessage(m) {
    if (m.type === "ack") {
      const entry = state.pending.get(m.cid);
      state.pending.delete(m.cid);
      state.acks.push(m);
      acknowledged(m, entry);
    } else if (m.type === "marks") {
      state.marks = m.items;
      if (highlighted && !m.items.some((x) => x.id === highlighted)) highlighted = null;
      draw(); listMarks();
    } else if (m.type === "status") {
      state.tracking = m.tracking; state.statusAt = Date.now();
      const P = m.P_image_model || null;
      const hid = window.mentorOcclusion ? window.mentorOcclusion.update(m) : false; // occlusion.js: marks behind the anatomy
      if (hid || JSON.stringify(P) !== JSON.stringify(state.projection)) { state.projection = P; draw(); } // redraw only when the view moved
    } else if (m.type === "participants") {
      state.participants = m.list; // one row per person (token name + role), however many tabs
      state.headset = m.headset || null;
      const rows = m.list.map((p) => {
        const li = document.createElement("li");
        const tabs = p.tabs > 1 ? `, ${p.tabs} tabs` : "";
        li.textContent = `${p.name} (${p.role}${p.quality === "none" ? ", no video" : ""}${tabs})`;
        return li;
      });
      if (m.headset) { // the surgeon's headset, with its tracking status
        const li = document.createElement("li");
        const h = m.headset;
        li.className = "headset";
        li.textContent = `${h.name} (${h.connected ? `tracking: ${h.tracking}` : "not connected"})`;
        rows.unshift(li);
      }
      $("people").replaceChildren(...rows);
    } else if (m.type === "pong") {
      state.rttMs = performance.now() - m.t;
    } else if (m.type === "error") {
      state.errors.push(m.error);
      if (m.code === "token_expired") finish("expired", m.error);
    } else if (m.type === "bye") { // the server closes the session: nothing to retry
      finish("ended", m.reason);
    } else if (m.type === "hello") {
      state.hello = m;
    }
  }
  setInterval(() => { if (dc && dc.readyState === "open") dc.send(JSON.stringify({ type: "ping", t: performance.now() })); }, 2000);

  // -- link quality from getStats -----------------------------------------------------
  async function linkQuality() {
    if (!pc || pc.connectionState !== "connected") { state.link = "-"; state.autoRuns.good = 0; return; } // a gap is no steady link
    const stats = await pc.getStats();
    let rtt = null, lost = 0, recv = 0, fps = null;
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      if (s.type === "inbound-rtp" && s.kind === "video") { lost = s.packetsLost || 0; recv = s.packetsReceived || 0; fps = s.framesPerSecond ?? null; }
    });
    const dl = prevStats ? lost - prevStats.lost : 0, dr = prevStats ? recv - prevStats.recv : 0;
    prevStats = { lost, recv };
    const loss = dl + dr > 0 ? (100 * dl) / (dl + dr) : 0;
    const r = rtt ?? (state.rttMs !== null ? state.rttMs / 1000 : 0);
    const grade = loss < 1 && r < 0.15 ? "good" : loss < 5 && r < 0.4 ? "fair" : "poor";
    state.link = `${grade} (rtt ${Math.round(r * 1000)} ms, loss ${loss.toFixed(1)}%${fps !== null && state.quality !== "none" ? `, ${Math.round(fps)} fps` : ""})`;
    state.linkGrade = grade;
    state.linkGrades = [...(state.linkGrades || []).slice(-119), grade]; // the last two minutes, oldest first
    autoQualityStep(grade);
  }
  setInterval(() => { linkQuality().catch((e) => state.errors.push(String(e))); }, 1000);

  // -- voice: microphone indicator and mute, theatre volume ----------------------------
  function showMic(word, why = "") {
    state.mic = word;
    show("mic", why ? `${word} (${why})` : word, word === "on" ? "good" : word === "muted" ? "fair" : "bad");
    $("mute").disabled = !micStream;
    $("mute").setAttribute("aria-pressed", String(state.micMuted));
    $("mute").firstChild.textContent = state.micMuted ? "Unmute " : "Mute ";
  }
  function toggleMute() {
    if (!micStream) return;
    state.micMuted = !state.micMuted;
    micStream.getAudioTracks().forEach((t) => { t.enabled = !state.micMuted; }); // muted: silence is sent
    showMic(state.micMuted ? "muted" : "on");
    notice(state.micMuted ? "Microphone muted: the theatre does not hear you." : "Microphone on: the theatre hears you.");
  }
  $("mute").addEventListener("click", toggleMute);
  function meterMic(stream) { // the level the theatre hears, so a live microphone is never a surprise
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    const audio = new Ctx();
    const analyser = audio.createAnalyser();
    analyser.fftSize = 512;
    audio.createMediaStreamSource(stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    document.addEventListener("pointerdown", () => { if (audio.state === "suspended") audio.resume(); }, { once: true });
    setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      const rms = Math.sqrt(buf.reduce((a, x) => a + x * x, 0) / buf.length);
      $("miclevel").value = state.micMuted ? 0 : Math.min(1, rms * 4);
    }, 150);
  }
  $("volume").addEventListener("input", (ev) => { $("theatre").volume = Number(ev.target.value); });

  start();
})();
