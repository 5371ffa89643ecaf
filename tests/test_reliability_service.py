"""The whole service SIGKILLed and restarted on the same state_dir (issue 7, faults): the audit
log stays one verified hash chain without a gap, the session's annotation store keeps the
epoch, and the headset ends equal to the server with every op applied once.

The child is ``scrubin serve`` minus the console: the same ``load_settings`` + ``Service``,
plus a churn of annotation ops through ``TheatreSession.publish_annotation`` (what a mentor's
anchored mark does), since a real mark needs a tracked pose and a browser.
"""

from __future__ import annotations

import sys
from pathlib import Path

from event_process import EventProcess
from test_reliability_restart import _free_ports
from test_serve import tiny_model

from headset_bridge.annotations import AnnotationStore, state_digest
from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import KeyPair, write_keypair
from scrubin.audit import audit_path, read_events
from scrubin.session import SessionKeys

REPO = Path(__file__).resolve().parents[1]
SESSION = "or-r"

CHILD = """
import json, sys, threading
from headset_bridge.annotations import state_digest
from headset_bridge.messages import Annotation
from scrubin.config import load_settings
from scrubin.service import Service

def emit(event, **kw):
    print(json.dumps({"event": event, **kw}), flush=True)

service = Service(load_settings(__import__("pathlib").Path(sys.argv[1]))).start()
session = service.sessions[sys.argv[2]]
session.model_ready.wait(60)
bridge = session.bridge
emit("up", epoch=bridge.epoch, seq=bridge.annotations[0])
stop = threading.Event()

def churn():
    i = bridge.annotations[0]
    while not stop.wait(0.01):
        i += 1
        ann = Annotation(f"m{i}", "point", "dr-m", "mentor", ((1.0, 2.0, float(i)),), i, text=f"mark {i}")
        session.publish_annotation("add", ann)
        if i % 3 == 0:
            session.publish_annotation("delete", f"m{i - 1}")

worker = threading.Thread(target=churn, daemon=True)
worker.start()
for line in sys.stdin:
    if line.strip() == "stop":
        stop.set()
        worker.join()
        seq, state = bridge.annotations
        emit("final", seq=seq, digest=state_digest(state))
    elif line.strip() == "exit":
        service.stop()
        break
"""


class ServeProcess(EventProcess):
    def __init__(self, config: Path) -> None:
        super().__init__([sys.executable, "-c", CHILD, str(config), SESSION], timeout_s=60.0)


def test_sigkilled_service_restarts_with_a_continuous_audit_and_equal_headsets(tmp_path: Path) -> None:
    state = tmp_path / "state"
    model = tiny_model(tmp_path / "model")
    keys = SessionKeys.load_or_create(state / "keys" / SESSION)  # what serve creates on first start
    headset = KeyPair.generate()
    write_keypair(state / "keys" / SESSION / "headsets", "hl-a", headset)
    pub, ctl = _free_ports()
    config = tmp_path / "serve.toml"
    config.write_text(
        f'state_dir = "{state}"\ncache_dir = "{tmp_path / "cache"}"\n[mentor]\nport = 0\n'
        f'[[sessions]]\nname = "{SESSION}"\nmodel = "{model}"\npub_port = {pub}\nctl_port = {ctl}\n'
    )
    client_cfg = ClientConfig(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{ctl}", keys.server.public)
    procs: list[ServeProcess] = []
    try:
        procs.append(ServeProcess(config))
        up = procs[0].next_event("up")
        with HeadsetClient(headset, client_cfg) as client:
            assert client.wait_for(lambda: client.annotations.seq >= 30, 30.0)
            procs[0].kill()  # mid-churn
            seen = client.annotations.seq
            procs.append(ServeProcess(config))
            restored = procs[1].next_event("up")
            assert restored["epoch"] == up["epoch"] and restored["seq"] >= seen  # nothing seen was lost
            assert client.wait_for(lambda: client.annotations.seq >= restored["seq"] + 20, 30.0)
            procs[1].tell("stop")
            final = procs[1].next_event("final")
            assert client.wait_for(lambda: client.annotations.seq == final["seq"], 15.0)
            applied = client.annotations.applied
            assert applied == list(range(applied[0], final["seq"] + 1))  # once each, in order
            assert state_digest(client.annotations.state) == final["digest"]
        procs[1].tell("exit")
        assert procs[1].proc.wait(30.0) == 0
    finally:
        for p in procs:
            p.kill()
    store = state / "annotations" / f"{SESSION}.sqlite"  # on by default, under state_dir
    assert [op.seq for op in AnnotationStore(store).ops()] == list(range(1, final["seq"] + 1))
    events = list(read_events(audit_path(state / "audit", SESSION)))  # raises on a gap or an edit
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + len(events)))
    actions = [e.action for e in events]
    starts = [i for i, a in enumerate(actions) if a == "session started"]
    assert len(starts) == 2 and "session stopped" not in actions[: starts[1]]  # the first run was killed
    assert actions[-1] == "session stopped"
    audited = [e.detail["seq"] for e in events if e.action.startswith("annotation ")]
    # Each op is stored, then audited: the kill can fall between the two for one op at most.
    assert len(set(audited)) == len(audited) and final["seq"] - len(audited) <= 1
