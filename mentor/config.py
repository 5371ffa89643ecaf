"""Mentor-server settings: loopback, no STUN/TURN and no TLS unless a deployment says so."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class IceServer:
    """One STUN/TURN server, as the browser's RTCIceServer (a deployment sets its own)."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": self.urls}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class MentorConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 = ephemeral; start() returns the URL with the real port
    # None reachable here: an empty list keeps aiortc from asking a public STUN server.
    ice_servers: tuple[IceServer, ...] = field(default_factory=tuple)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    status_hz: float = 10.0  # marks re-projected with the current pose and sent to mentors
    pose_history_s: float = 5.0
    max_pose_gap_ms: float = 100.0  # a frame further than this from every pose is not anchored
    max_offer_bytes: int = 256 * 1024
    max_dc_message_bytes: int = 64 * 1024
    # A peer that pings (the page does, every 2 s) and then goes quiet this long is dropped:
    # a killed browser sends no goodbye, and ICE consent only notices after about 30 s.
    peer_silence_s: float = 10.0
    # An answered peer whose ICE and DTLS are not connected within this is closed: a half-open
    # offer never becomes a participant and does not keep its UDP sockets until its token expires.
    connect_timeout_s: float = 10.0
    max_pending_peers: int = 32  # per room: answered and not yet connected; more are refused (503)
    # HTTP connection limits (mentor.guard): idle sockets must never shut the page out.
    max_connections: int = 512  # in total; lowered to half the descriptor limit if that is less
    max_connections_per_ip: int = 64  # behind a reverse proxy every client shares its address
    header_timeout_s: float = 10.0  # a new connection sends a complete request head within this
    keepalive_timeout_s: float = 30.0  # an idle connection after an answer is closed after this
    body_timeout_s: float = 10.0  # an offer's body arrives within this
    raise_fd_limit: bool = True  # the soft descriptor limit is raised to the hard one at start

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            msg = f"TLS needs both tls_cert and tls_key, got cert={self.tls_cert!r} key={self.tls_key!r}"
            raise ValueError(msg)
        if not 0 <= self.port < 65536:
            msg = f"port must be within 0..65535, got {self.port!r}"
            raise ValueError(msg)
        if self.status_hz <= 0:
            msg = f"status_hz must be positive, got {self.status_hz!r}"
            raise ValueError(msg)
        for name in ("connect_timeout_s", "header_timeout_s", "keepalive_timeout_s", "body_timeout_s"):
            if getattr(self, name) <= 0:
                msg = f"{name} must be positive, got {getattr(self, name)!r}"
                raise ValueError(msg)
        for name in ("max_pending_peers", "max_connections", "max_connections_per_ip"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1, got {getattr(self, name)!r}"
                raise ValueError(msg)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"
