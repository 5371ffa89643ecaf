// scrubin mentor page: marks the anatomy hides from the headset camera.
// The server decides (a depth test against the patient model at the current pose, see
// mentor/occlusion.py) and sends, with each status, {mark id: [hidden, ...] per point} for the
// marks with a hidden point. The video overlay then draws those marks dimmed and dashed: a
// mark on the back of the head must not look as if it were on the face.
"use strict";

(() => {
  const HIDDEN_ALPHA = 0.5;
  const HIDDEN_DASH = [4, 3];
  const occ = {
    occluded: {}, // the newest status's map
    drawn: {}, // mark id -> true when it was last drawn as hidden (tests and debugging read it)
    updates: 0,
  };

  // A new status; true when the hidden set changed (the page then redraws).
  occ.update = (status) => {
    const next = status && typeof status.occluded === "object" && status.occluded ? status.occluded : {};
    const changed = JSON.stringify(next) !== JSON.stringify(occ.occluded);
    occ.occluded = next;
    occ.updates += 1;
    return changed;
  };

  // A mark counts as behind the anatomy when at least half of its points are hidden.
  occ.hidden = (mark) => {
    const flags = mark && mark.anchored ? occ.occluded[mark.id] : null;
    if (!Array.isArray(flags) || !flags.length) return false;
    return flags.filter(Boolean).length * 2 >= flags.length;
  };

  // The overlay's draw loop asks state.markLook(mark) how to draw each mark in sight
  // (mentor.js): a hidden one is drawn dimmed and dashed, not left out, so the mentor still
  // knows it is there.
  occ.look = (mark) => {
    const hidden = occ.hidden(mark);
    occ.drawn[mark.id] = hidden;
    return hidden ? { alpha: HIDDEN_ALPHA, dash: HIDDEN_DASH, behind: true } : {};
  };

  window.mentorOcclusion = occ;
  if (window.mentor) window.mentor.markLook = occ.look; // loaded after mentor.js (index.html)
})();
