"""The headset side never crashes on bad input either: a raw CURVE server feeds it garbage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headset_bridge import protocol as P
from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import KeyPair


class FakeServer:
    """A CURVE PUB + ROUTER speaking whatever the test says (no ZAP: any key may connect)."""

    def __init__(self) -> None:
        self.keys = KeyPair.generate()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pub, self.router = self.ctx.socket(zmq.PUB), self.ctx.socket(zmq.ROUTER)
        for s in (self.pub, self.router):
            s.curve_server, s.curve_publickey, s.curve_secretkey = True, self.keys.public, self.keys.secret
            s.linger = 0
            s.bind("tcp://127.0.0.1:*")
        self.client = HeadsetClient(
            KeyPair.generate(), ClientConfig(self._ep(self.pub), self._ep(self.router), self.keys.public)
        )
        self.seq = 0

    @staticmethod
    def _ep(s: zmq.Socket[Any]) -> str:
        return str(s.getsockopt_string(zmq.LAST_ENDPOINT))

    def pose(self) -> int:
        self.seq += 1
        header = {"seq": self.seq, "t_ns": 1, "t_capture_ns": 1, "status": "lost", "reason": "test", "fitness": None,
                  "rmse_mm": None, "repeat": False, "epoch": "fake", "ann_seq": 0, "model": None, "sensor": "",
                  "sensor_frame_seq": -1}  # fmt: skip
        self.pub.send_multipart(P.encode("pose", header, P.pack_mat4(np.eye(4))))
        return self.seq

    def close(self) -> None:
        self.client.close()
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    f = FakeServer()
    # PUB/SUB joins asynchronously: keep offering poses until one arrives.
    assert f.client.wait_for(lambda: f.client.view().seq > 0 or f.pose() < 0, 5.0)
    yield f
    f.close()


anything = st.one_of(st.binary(max_size=200), st.sampled_from([b"pose", b"ann", b"{}", b"\x00" * 128]))
headers = st.dictionaries(
    st.sampled_from(["v", "type", "seq", "t_ns", "status", "repeat", "epoch", "model", "op", "id", "fitness"]),
    st.one_of(st.integers(-3, 3), st.text(max_size=6), st.none(), st.booleans(), st.just({"sha256": 1})),
    max_size=11,
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from([b"pose", b"ann", b"x"]), st.one_of(headers, anything), anything),
        min_size=1,
        max_size=4,
    )
)
def test_garbage_from_the_server_is_counted_and_dropped(
    fake: FakeServer, frames: list[tuple[bytes, bytes, bytes]]
) -> None:
    c = fake.client
    for f in frames:
        fake.pub.send_multipart(list(f))
    marker = fake.pose()  # ordered behind the garbage on the same connection
    assert c.wait_for(lambda: c.view().seq == marker, 3.0)
    assert c.view().status == "lost" and not c.view().live


def test_malformed_replies_on_the_dealer(fake: FakeServer) -> None:
    c = fake.client
    assert fake.router.poll(3000)  # the client's first requests (sync, hb, time_req)
    rid = fake.router.recv_multipart()[0]
    before = c.counters.get("malformed")
    fake.router.send_multipart(
        [rid, b"snapshot", b'{"v":1,"type":"snapshot","seq":1,"t_ns":1,"epoch":"e","count":1}', b"[1, 2]"]
    )
    fake.router.send_multipart(
        [rid, b"time_rep", b'{"v":1,"type":"time_rep","seq":1,"t_ns":1,"t0_ns":9,"t1_ns":5,"t2_ns":1}', b""]
    )
    fake.router.send_multipart([rid, b"pose", b"{}", b""])  # a PUB-only type on the DEALER
    assert c.wait_for(lambda: c.counters.get("malformed") >= before + 3, 3.0)
    assert not c.annotations.synced and c.epoch == "fake"  # the rejected snapshot changed nothing
