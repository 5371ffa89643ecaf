// scrubin mentor page: live headset video, voice, and marks anchored on the patient.
// Plain script, no framework. The token comes in the URL fragment (never sent to servers).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const session = decodeURIComponent(location.pathname.split("/")[2] || "");
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  history.replaceState(null, "", location.pathname); // keep the token out of the address bar

  const RESEND_MS = 1000;
  const ICE_TIMEOUT_MS = 5000;
  const STATUS_STALE_MS = 1500;

  const state = {
    session, role: null, name: null, mayAnnotate: false, camera: { width: 640, height: 480 },
    conn: "starting", tracking: "lost", link: "-", quality: "high", error: null,
    frames: 0, lastRtp: null, lastFrameAt: 0, marks: [], participants: [], acks: [], errors: [],
    pending: new Map(), sent: 0, resent: 0, statusAt: 0, rttMs: null, connectedAt: null, projection: null,
  };
  window.mentor = state; // read by tests and by people debugging a session
  state.peer = () => pc;

  let pc = null;
  let dc = null;
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
  function refreshStatus() {
    const c = state.conn;
    show("conn", c, c === "connected" ? "good" : c === "connecting" || c === "new" ? "fair" : "bad");
    const stale = Date.now() - state.statusAt > STATUS_STALE_MS;
    const t = stale ? "unknown (no status)" : state.tracking;
    show("tracking", t, t === "tracking" ? "good" : t === "degraded" ? "fair" : "bad");
    const l = state.link.split(" ")[0];
    show("link", state.link, l === "good" ? "good" : l === "fair" ? "fair" : "bad");
  }
  setInterval(refreshStatus, 250);

  // -- HTTP -----------------------------------------------------------------------------
  async function post(path, body) {
    const r = await fetch(`/s/${encodeURIComponent(session)}/${path}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
      signal: AbortSignal.timeout(10000),
    });
    const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (!r.ok) throw Object.assign(new Error(data.error || `HTTP ${r.status}`), { status: r.status });
    return data;
  }

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

  async function microphone() {
    if (!state.mayAnnotate || !navigator.mediaDevices) return null;
    try {
      return await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (e) {
      notice(`No microphone (${e.name}): voice is off.`);
      return null;
    }
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
      state.dcOpen = true;
      resendAll();
      channel.send(JSON.stringify({ type: "quality", level: state.quality }));
    };
    channel.onclose = () => { state.dcOpen = false; };
    channel.onmessage = (ev) => onMessage(JSON.parse(ev.data));
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
    peer.onconnectionstatechange = () => {
      state.conn = peer.connectionState;
      if (state.conn === "connected" && !state.connectedAt) state.connectedAt = performance.now();
      if (state.conn === "failed") setTimeout(reconnect, 1000);
    };
    await peer.setLocalDescription(await peer.createOffer());
    await waitIce(peer);
    const answer = await post("offer", { type: "offer", sdp: peer.localDescription.sdp, quality: state.quality });
    await peer.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    state.participant = answer.participant;
  }

  async function reconnect() {
    if (pc && pc.connectionState === "connected") return;
    try { if (pc) pc.close(); } catch (e) { /* already closed */ }
    state.conn = "reconnecting";
    try { await connect(state.config); } catch (e) { state.errors.push(String(e)); setTimeout(reconnect, 2000); }
  }

  async function start() {
    let config;
    try {
      config = await post("config");
    } catch (e) {
      state.error = e.message;
      state.conn = e.status === 401 ? "refused" : "error";
      notice(`Cannot join: ${e.message}`);
      $("tools").disabled = true;
      refreshStatus();
      return;
    }
    Object.assign(state, { config, role: config.role, name: config.name, mayAnnotate: config.may_annotate, camera: config.camera });
    $("me").textContent = `${config.name} (${config.role})`;
    $("tools").disabled = !config.may_annotate;
    if (!config.may_annotate) notice("Observer: you can watch and listen; marking is for mentors.");
    resize();
    try { await connect(config); } catch (e) { state.errors.push(String(e)); state.conn = "failed"; notice(`Connection failed: ${e.message}`); }
  }

  // -- video frames ---------------------------------------------------------------------
  function onFrame(now, meta) {
    state.frames += 1;
    state.lastRtp = meta.rtpTimestamp ?? null;
    if (state.lastRtp !== null) { recentRtp.push(state.lastRtp); if (recentRtp.length > 8) recentRtp.shift(); }
    state.lastFrameAt = now;
    state.frameWidth = meta.width;
    video.requestVideoFrameCallback(onFrame);
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onFrame);

  state.samplePixel = (x, y) => { // decoded pixel at video (x, y), through a canvas
    const c = document.createElement("canvas");
    c.width = video.videoWidth; c.height = video.videoHeight;
    if (!c.width) return null;
    const g = c.getContext("2d", { willReadFrequently: true });
    g.drawImage(video, 0, 0);
    return Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3));
  };

  // -- geometry: camera pixels <-> overlay ----------------------------------------------
  function fit() {
    const w = overlay.width, h = overlay.height, cw = state.camera.width, ch = state.camera.height;
    const s = Math.min(w / cw, h / ch);
    return { s, ox: (w - cw * s) / 2, oy: (h - ch * s) / 2 };
  }
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
    const r = overlay.getBoundingClientRect();
    overlay.width = Math.round(r.width) || 640;
    overlay.height = Math.round(r.height) || 480;
    draw();
  }
  window.addEventListener("resize", resize);

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
  function draw() {
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    for (const m of state.marks) {
      const pts = markUv(m).filter((p) => p[2]).map((p) => toCanvas(p[0], p[1]));
      if (!pts.length) continue;
      ctx.strokeStyle = ctx.fillStyle = m.color;
      ctx.lineWidth = 3;
      ctx.setLineDash(m.anchored ? [] : [6, 4]);
      if (m.kind === "stroke") {
        ctx.beginPath();
        pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.stroke();
      } else {
        ctx.beginPath();
        ctx.arc(pts[0][0], pts[0][1], 6, 0, 2 * Math.PI);
        ctx.stroke();
      }
      const tag = (m.text ? `${m.text} ` : "") + (m.anchored ? "" : "(2D)");
      if (tag) { ctx.font = "14px system-ui"; ctx.fillText(tag, pts[0][0] + 9, pts[0][1] - 9); }
    }
    if (stroke) {
      ctx.strokeStyle = $("colour").value; ctx.setLineDash([]); ctx.beginPath();
      stroke.points.forEach(([u, v], i) => { const [x, y] = toCanvas(u, v); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
    }
  }

  let listedMarks = "";
  function listMarks() {
    // Marks arrive re-projected up to 10 times a second; the list only changes when marks
    // are added or erased, and rebuilding it each time kept the page's main thread (which
    // also takes the clicks) busy.
    const lines = state.marks.map((m) => `${m.kind}${m.text ? ` "${m.text}"` : ""} by ${m.author}: ${m.anchored ? "on the model" : `2D only (${m.reason})`}`);
    const key = lines.join("\n");
    if (key === listedMarks) return;
    listedMarks = key;
    $("marks").replaceChildren(...lines.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
  }

  // -- sending marks: acknowledged, re-sent until acknowledged, never doubled -----------
  function newCid() { cidCounter += 1; return `${Date.now().toString(36)}-${cidCounter}-${Math.random().toString(36).slice(2, 8)}`; }
  function send(msg) {
    const entry = { msg, sentAt: performance.now() };
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

  function frameRef() { return state.quality === "none" ? null : state.lastRtp; }
  function annotate(kind, uv, rtp) {
    const msg = { type: "annotate", cid: newCid(), kind, uv, color: $("colour").value, rtp_ts: rtp, rtp_recent: rtp === null ? [] : recentRtp.slice() };
    if (kind === "label") msg.text = $("labeltext").value || "label";
    return send(msg);
  }
  function erase(u, v) {
    let best = null, bestD = 15 / fit().s;
    for (const m of state.marks) for (const p of m.uv) {
      const d = Math.hypot(p[0] - u, p[1] - v);
      if (p[2] && d < bestD) { best = m; bestD = d; }
    }
    if (best) send({ type: "erase", cid: newCid(), id: best.id }); else notice("Nothing to erase there.");
  }

  // -- pointer input ------------------------------------------------------------------
  let stroke = null;
  function tool() { return document.querySelector("input[name=tool]:checked").value; }
  overlay.addEventListener("pointerdown", (ev) => {
    if (!state.mayAnnotate) { notice("Observers cannot mark."); return; }
    const [u, v] = toCamera(ev.clientX, ev.clientY);
    if (u < 0 || v < 0 || u >= state.camera.width || v >= state.camera.height) return;
    const t = tool();
    if (t === "stroke") { stroke = { points: [[u, v]], rtp: frameRef() }; overlay.setPointerCapture(ev.pointerId); }
    else if (t === "erase") erase(u, v);
    else annotate(t, [[u, v]], frameRef());
  });
  overlay.addEventListener("pointermove", (ev) => {
    if (!stroke || stroke.points.length >= 512) return;
    const [u, v] = toCamera(ev.clientX, ev.clientY);
    if (u >= 0 && v >= 0 && u < state.camera.width && v < state.camera.height) { stroke.points.push([u, v]); draw(); }
  });
  overlay.addEventListener("pointerup", () => {
    if (stroke && stroke.points.length > 1) annotate("stroke", stroke.points, stroke.rtp);
    stroke = null;
    draw();
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
      state.pending.delete(m.cid);
      state.acks.push(m);
      if (!m.ok) notice(`Refused: ${m.error}`);
      else if (!m.duplicate) notice(m.anchored ? "Mark placed on the model." : `Mark kept in 2D: ${m.reason}.`);
    } else if (m.type === "marks") {
      state.marks = m.items; draw(); listMarks();
    } else if (m.type === "status") {
      state.tracking = m.tracking; state.statusAt = Date.now();
      const P = m.P_image_model || null;
      if (JSON.stringify(P) !== JSON.stringify(state.projection)) { state.projection = P; draw(); } // redraw only when the view moved
    } else if (m.type === "participants") {
      state.participants = m.list;
      $("people").replaceChildren(...m.list.map((p) => {
        const li = document.createElement("li");
        li.textContent = `${p.name} (${p.role}${p.quality === "none" ? ", no video" : ""})`;
        return li;
      }));
    } else if (m.type === "pong") {
      state.rttMs = performance.now() - m.t;
    } else if (m.type === "error") {
      state.errors.push(m.error);
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

  start();
})();
