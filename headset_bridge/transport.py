"""pyzmq at the edge: CURVE-only sockets, the ZAP authenticator, endpoints.

There is deliberately no way to make a plaintext socket here.
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from headset_bridge.keys import Allowlist, KeyPair

log = logging.getLogger(__name__)

ZAP_DOMAIN = "scrubin"
DEFAULT_PUB_PORT = 5570
DEFAULT_CTL_PORT = 5571
# ZMTP-level heartbeats: the kernel may keep a dead TCP peer "up" for minutes;
# these make libzmq drop it (and its queued messages) within a couple of seconds.
_ZMTP_HEARTBEAT_MS = 250
_ZMTP_TIMEOUT_MS = 1500


def start_authenticator(ctx: zmq.Context[Any], allowlist: Allowlist) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=allowlist)
    return auth


def _common(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, _ZMTP_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ZMTP_TIMEOUT_MS)


def server_socket(ctx: zmq.Context[Any], kind: int, keys: KeyPair) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(kind)
    _common(sock)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    # Without this libzmq accepts every CURVE client when no ZAP handler runs.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return sock


def client_socket(ctx: zmq.Context[Any], kind: int, keys: KeyPair, server_public: bytes) -> zmq.Socket[Any]:
    if len(server_public) != 40:
        msg = f"server public key must be 40 Z85 chars, got {server_public!r}"
        raise ValueError(msg)
    sock: zmq.Socket[Any] = ctx.socket(kind)
    _common(sock)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    return sock


def bind(sock: zmq.Socket[Any], host: str, port: int) -> str:
    """Bind (port 0 = ephemeral) and return the resolved endpoint."""
    sock.bind(f"tcp://{host}:{port if port else '*'}")
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()
