"""What a browser may send: the offer request and the data-channel messages, validated.

Nothing from a peer is trusted: every parse either returns a typed message or raises
:class:`SignallingError` with one line naming the field and quoting the bad value, which
the server counts and answers; it never ends the service.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from mentor.video import LEVELS, NO_VIDEO

QUALITIES: Final = (*LEVELS, NO_VIDEO)
KINDS: Final = ("point", "stroke", "label")
MAX_POINTS: Final = 512
MAX_TEXT: Final = 200
MAX_RECENT: Final = 16
MAX_SDP: Final = 128 * 1024
MAX_MODEL_MM: Final = 10_000.0  # a model point further than 10 m from the model's origin is no anatomy
_CID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


class SignallingError(ValueError):
    """A peer message that cannot be used; the text says which field and why."""


@dataclass(frozen=True)
class OfferRequest:
    sdp: str
    quality: str


@dataclass(frozen=True)
class Annotate:
    cid: str  # the page's own id: acks refer to it, a re-send with the same cid is a duplicate
    kind: str
    uv: tuple[tuple[float, float], ...]
    text: str
    color: str
    rtp_ts: float | None  # the viewer's timestamp of the frame shown when clicked (rVFC rtpTimestamp)
    t_capture_ns: int | None  # or the capture time itself (other clients); neither: latest pose
    rtp_recent: tuple[float, ...] = ()  # timestamps of the last presented frames, to calibrate
    # A click on the 3D view: the model point itself (mm), no frame and no uv (then empty).
    point_model_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Erase:
    cid: str
    id: str


@dataclass(frozen=True)
class Restore:
    """Undo of the sender's own erase: the mark comes back as it was."""

    cid: str
    id: str


@dataclass(frozen=True)
class Quality:
    level: str


@dataclass(frozen=True)
class Ping:
    t: float


ClientMessage = Annotate | Erase | Restore | Quality | Ping


def _json_object(text: str | bytes, what: str, limit: int) -> dict[str, Any]:
    if len(text) > limit:
        msg = f"{what} over {limit} bytes, got {len(text)!r}"
        raise SignallingError(msg)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        msg = f"{what} is not JSON ({exc}), got {str(text)[:80]!r}"
        raise SignallingError(msg) from None
    if not isinstance(data, dict):
        msg = f"{what} must be a JSON object, got {str(data)[:80]!r}"
        raise SignallingError(msg)
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(k.__name__ for k in kinds)
        msg = f"{what}.{name} must be {names}, got {str(value)[:80]!r}"
        raise SignallingError(msg)
    return value


def parse_offer(body: bytes, limit: int = MAX_SDP) -> OfferRequest:
    data = _json_object(body, "offer", limit)
    if data.get("type") != "offer":
        msg = f"offer.type must be 'offer', got {str(data.get('type'))[:40]!r}"
        raise SignallingError(msg)
    sdp = _field(data, "sdp", str, "offer")
    if not sdp.startswith("v=0"):
        msg = f"offer.sdp must be an SDP offer starting with 'v=0', got {sdp[:40]!r}"
        raise SignallingError(msg)
    quality = data.get("quality", "high")
    if quality not in QUALITIES:
        msg = f"offer.quality must be one of {QUALITIES}, got {str(quality)[:40]!r}"
        raise SignallingError(msg)
    return OfferRequest(sdp, quality)


def _optional_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        value = int(value)  # ns do not fit a JS number: the page may send a decimal string
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        msg = f"annotate.{name} must be a non-negative int or null, got {str(value)[:40]!r}"
        raise SignallingError(msg)
    return value


def _uv(raw: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_POINTS:
        msg = f"annotate.uv must be a list of 1..{MAX_POINTS} [u, v] pairs, got {str(raw)[:80]!r}"
        raise SignallingError(msg)
    out: list[tuple[float, float]] = []
    for p in raw:
        ok = isinstance(p, list) and len(p) == 2
        ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in p)
        if not ok:
            msg = f"annotate.uv entries must be finite [u, v] pairs, got {str(p)[:80]!r}"
            raise SignallingError(msg)
        out.append((float(p[0]), float(p[1])))
    return tuple(out)


def _cid(data: dict[str, Any], what: str) -> str:
    cid = data.get("cid")
    if not isinstance(cid, str) or not _CID.match(cid):
        msg = f"{what}.cid must be 1-64 letters, digits or _.:-, got {str(cid)[:80]!r}"
        raise SignallingError(msg)
    return cid


def _annotate(data: dict[str, Any]) -> Annotate:
    cid = _cid(data, "annotate")
    kind = data.get("kind")
    if kind not in KINDS:
        msg = f"annotate.kind must be one of {KINDS}, got {str(kind)[:40]!r}"
        raise SignallingError(msg)
    point = _model_point(data.get("point_model_mm"))
    if point is not None and (kind == "stroke" or data.get("uv") is not None):
        msg = f"annotate.point_model_mm places one point or label and takes no uv, got kind {kind!r}"
        raise SignallingError(msg)
    uv = () if point is not None else _uv(data.get("uv"))
    if kind != "stroke" and len(uv) != 1 and point is None:
        msg = f"annotate.uv of a {kind} must hold one point, got {len(uv)!r}"
        raise SignallingError(msg)
    text = data.get("text", "")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        msg = f"annotate.text must be a str of at most {MAX_TEXT} chars, got {str(text)[:80]!r}"
        raise SignallingError(msg)
    if kind == "label" and not text.strip():
        msg = f"annotate.text of a label must not be empty, got {text!r}"
        raise SignallingError(msg)
    color = data.get("color", "#ffcc00")
    if not isinstance(color, str) or not _COLOUR.match(color):
        msg = f"annotate.color must be #rrggbb, got {str(color)[:40]!r}"
        raise SignallingError(msg)
    rtp = data.get("rtp_ts")
    if rtp is not None and not _finite(rtp):
        msg = f"annotate.rtp_ts must be a finite number or null, got {str(rtp)[:40]!r}"
        raise SignallingError(msg)
    recent = data.get("rtp_recent", [])
    if not isinstance(recent, list) or len(recent) > MAX_RECENT or not all(_finite(r) for r in recent):
        msg = f"annotate.rtp_recent must be a list of at most {MAX_RECENT} finite numbers, got {str(recent)[:80]!r}"
        raise SignallingError(msg)
    t = _optional_int(data, "t_capture_ns")
    rtp_f = None if rtp is None else float(rtp)
    return Annotate(cid, kind, uv, text, color, rtp_f, t, tuple(float(r) for r in recent), point)


def _model_point(raw: Any) -> tuple[float, float, float] | None:
    """A 3D-view click: [x, y, z] model mm, finite and within MAX_MODEL_MM of the origin."""
    if raw is None:
        return None
    ok = isinstance(raw, list) and len(raw) == 3 and all(_finite(c) and abs(c) <= MAX_MODEL_MM for c in raw)
    if not ok:
        msg = f"annotate.point_model_mm must be [x, y, z], finite mm within {MAX_MODEL_MM:.0f}, got {str(raw)[:80]!r}"
        raise SignallingError(msg)
    return (float(raw[0]), float(raw[1]), float(raw[2]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_message(text: str | bytes, limit: int = 64 * 1024) -> ClientMessage:
    """One data-channel message from a page."""
    data = _json_object(text, "message", limit)
    kind = data.get("type")
    if kind == "annotate":
        return _annotate(data)
    if kind in ("erase", "restore"):
        ident = data.get("id")
        if not isinstance(ident, str) or not 0 < len(ident) <= 128:
            msg = f"{kind}.id must be a non-empty str of at most 128 chars, got {str(ident)[:80]!r}"
            raise SignallingError(msg)
        return Erase(_cid(data, kind), ident) if kind == "erase" else Restore(_cid(data, kind), ident)
    if kind == "quality":
        level = data.get("level")
        if level not in QUALITIES:
            msg = f"quality.level must be one of {QUALITIES}, got {str(level)[:40]!r}"
            raise SignallingError(msg)
        return Quality(level)
    if kind == "ping":
        t = _field(data, "t", (int, float), "ping")
        return Ping(float(t))
    msg = f"message.type must be annotate, erase, restore, quality or ping, got {str(kind)[:40]!r}"
    raise SignallingError(msg)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
