"""CURVE + ZAP allowlist: unknown keys, plaintext clients and fake servers get nothing."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from bridge_fixtures import Bridge, pose, ready, running_bridge, wait_all
from typer.testing import CliRunner
from zmq.utils.monitor import recv_monitor_message

from headset_bridge import protocol as P
from headset_bridge.keys import Allowlist, KeyPair, load_keypair, load_public, write_keypair
from headset_bridge.transport import client_socket
from scrubin.cli_keys import keys_app

bridge = pytest.fixture(name="bridge")(running_bridge)

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)

# The CURVE server and a NULL or wrongly keyed peer fail before any message.
REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def _handshake(sock: zmq.Socket[Any], timeout_s: float = 3.0) -> int:
    """The first handshake outcome seen by the socket's monitor."""
    mon = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        if not mon.poll(int(timeout_s * 1000)):
            return 0
        return int(recv_monitor_message(mon)["event"])
    finally:
        sock.disable_monitor()
        mon.close(linger=0)


def _sub(sock: zmq.Socket[Any], endpoint: str) -> zmq.Socket[Any]:
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _gets_nothing_while_a_good_headset_hears(bridge: Bridge, bad: zmq.Socket[Any]) -> None:
    """Positive control: in the same window an allowed headset receives three poses."""
    good = bridge.client("hl-b")
    for i in range(1, 4):
        bridge.server.publish_pose(pose(i))
        assert good.wait_for(lambda i=i: good.view().seq == i, 3.0)  # type: ignore[misc]
    assert bad.poll(0) == 0, "an unauthorised socket received data"
    assert set(bridge.server.headsets()) == {"hl-b"}


def test_unknown_key_is_denied_and_gets_nothing(bridge: Bridge, ctx: zmq.Context[Any]) -> None:
    stranger = _sub(
        client_socket(ctx, zmq.SUB, KeyPair.generate(), bridge.server_keys.public), bridge.server.pub_endpoint
    )
    assert _handshake(stranger) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    _gets_nothing_while_a_good_headset_hears(bridge, stranger)


def test_unencrypted_client_gets_nothing(bridge: Bridge, ctx: zmq.Context[Any]) -> None:
    plain = _sub(ctx.socket(zmq.SUB), bridge.server.pub_endpoint)
    assert _handshake(plain) in REFUSED
    _gets_nothing_while_a_good_headset_hears(bridge, plain)


def test_unknown_key_on_control_socket_reaches_nothing(bridge: Bridge, ctx: zmq.Context[Any]) -> None:
    dealer = client_socket(ctx, zmq.DEALER, KeyPair.generate(), bridge.server_keys.public)
    dealer.connect(bridge.server.ctl_endpoint)
    assert _handshake(dealer) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    with contextlib.suppress(zmq.Again):  # queued at best on a pipe that never completes its handshake
        dealer.send_multipart(P.encode("time_req", {"seq": 1, "t_ns": 1}), flags=zmq.NOBLOCK)
    good = bridge.client("hl-a")
    assert good.wait_for(lambda: ready(good), 3.0)
    assert set(bridge.server.headsets()) == {"hl-a"}
    assert dealer.poll(0) == 0


def test_headset_refuses_a_server_with_the_wrong_key(bridge: Bridge, ctx: zmq.Context[Any]) -> None:
    impostor_key = KeyPair.generate().public
    sub = _sub(client_socket(ctx, zmq.SUB, bridge.headset_keys["hl-a"], impostor_key), bridge.server.pub_endpoint)
    assert _handshake(sub) in REFUSED
    _gets_nothing_while_a_good_headset_hears(bridge, sub)


def test_allowed_key_handshakes(bridge: Bridge, ctx: zmq.Context[Any]) -> None:
    sub = _sub(
        client_socket(ctx, zmq.SUB, bridge.headset_keys["hl-c"], bridge.server_keys.public), bridge.server.pub_endpoint
    )
    assert _handshake(sub) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert sub.poll(3000) and sub.recv_multipart()[0] == b"pose"  # the keepalive


def test_write_keypair_standard_format_and_secret_mode(tmp_path: Path) -> None:
    public_path, secret_path = write_keypair(tmp_path, "hl-7")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    pair = load_keypair(secret_path)
    assert load_public(public_path) == pair.public and len(pair.secret) == 40
    assert zmq.curve_public(pair.secret) == pair.public
    assert "secret-key" not in public_path.read_text()
    with pytest.raises(FileExistsError, match="hl-7.key"):
        write_keypair(tmp_path, "hl-7")
    with pytest.raises(ValueError, match="got '../evil'"):
        write_keypair(tmp_path, "../evil")


def test_allowlist_from_folder(tmp_path: Path) -> None:
    write_keypair(tmp_path, "hl-1")
    allow = Allowlist(directory=tmp_path)
    assert allow.name_of(load_public(tmp_path / "hl-1.key")) == "hl-1"
    assert allow.callback("scrubin", KeyPair.generate().public) is False
    (tmp_path / "hl-1.key").unlink()
    allow.reload()
    assert allow.name_of(load_public(tmp_path / "hl-1.key_secret")) is None


def test_cli_keys_new(tmp_path: Path) -> None:
    result = CliRunner().invoke(keys_app, ["new", "hl-9", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "hl-9.key_secret").stat().st_mode) == 0o600
    again = CliRunner().invoke(keys_app, ["new", "hl-9", "--dir", str(tmp_path)])
    assert again.exit_code == 2


def test_revoked_key_is_cut_off_and_refused_on_reconnect(bridge: Bridge) -> None:
    c = bridge.client("hl-a")
    good = bridge.client("hl-b")
    assert wait_all([c, good], ready)
    bridge.server.allowlist.remove("hl-a")
    # The server re-opens its sockets (libzmq cannot drop one peer of a PUB): every
    # headset reconnects, the revoked one is refused and hears nothing more.
    assert c.wait_for(lambda: bridge.server.counters.get("revoked") >= 1, 5.0)
    c.send_headset_pose(np.eye(4))
    again = bridge.client("hl-a")  # a new connection with the revoked key
    with pytest.raises(KeyError, match="got 'hl-a'"):
        bridge.server.allowlist.remove("hl-a")
    for i in range(1, 4):  # positive control in the same window: hl-b reconnected and hears
        bridge.server.publish_pose(pose(i))
        assert good.wait_for(lambda i=i: good.view().seq == i, 5.0)  # type: ignore[misc]
    c.poll(0)
    again.poll(0)
    assert c.view().seq == 0 and not c.view().live, c.view()  # nothing after the revocation
    assert again.view().reason == "nothing heard yet" and not again.clock.synced
    assert bridge.server.take("headset_pose", "hl-a") == []
