"""Server process killed (SIGKILL) mid-session and restarted (issue 7, faults): with the
persistent annotation store nothing a headset saw is lost, the epoch is kept, and the
reconnected headset ends equal to the server with every op applied once, in order. Without
a store the restart is a new epoch and the headset resyncs from a snapshot.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from event_process import EventProcess

from headset_bridge.annotations import AnnotationLog, AnnotationStore, AnnotationStoreError, state_digest
from headset_bridge.client import ClientConfig, HeadsetClient
from headset_bridge.keys import KeyPair, write_keypair
from headset_bridge.messages import Annotation

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "reliability_bridge_child.py"


class ServerProcess(EventProcess):
    """``reliability_bridge_child.py server`` on fixed ports, with its JSON events in a queue."""

    def __init__(self, keys: Path, ports: tuple[int, int], store: Path | None) -> None:
        cmd = [sys.executable, str(CHILD), "server", "--keys", str(keys)]
        cmd += ["--pub-port", str(ports[0]), "--ctl-port", str(ports[1])]
        cmd += ["--store", str(store)] if store is not None else []
        super().__init__(cmd, timeout_s=20.0)


def _free_ports() -> tuple[int, int]:
    """Two ports the OS hands out now; the restarted server must bind the same ones."""
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = (socks[0].getsockname()[1], socks[1].getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, KeyPair, ClientConfig, list[ServerProcess]]]:
    server_keys, headset_keys = KeyPair.generate(), KeyPair.generate()
    write_keypair(tmp_path / "keys", "server", server_keys)
    write_keypair(tmp_path / "keys", "hl-a", headset_keys)
    pub, ctl = _free_ports()
    config = ClientConfig(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{ctl}", server_keys.public)
    procs: list[ServerProcess] = []
    yield tmp_path, headset_keys, config, procs
    for p in procs:
        p.kill()


def _start(tmp: Path, config: ClientConfig, store: Path | None, procs: list[ServerProcess]) -> ServerProcess:
    ports = (int(config.pub_endpoint.rsplit(":", 1)[1]), int(config.ctl_endpoint.rsplit(":", 1)[1]))
    proc = ServerProcess(tmp / "keys", ports, store)
    procs.append(proc)
    return proc


def test_sigkilled_server_with_store_loses_nothing_and_keeps_the_epoch(setup: Any) -> None:
    tmp, headset_keys, config, procs = setup
    store = tmp / "annotations.sqlite"
    first = _start(tmp, config, store, procs)
    up = first.next_event("up")
    with HeadsetClient(headset_keys, config) as client:
        assert client.wait_for(lambda: client.annotations.seq >= 40, 20.0)
        first.kill()  # mid-churn: ops in flight, maybe mid-fsync
        assert client.wait_for(lambda: not client.view().live, 5.0)
        seen = client.annotations.seq  # the most this headset ever saw of the first server
        second = _start(tmp, config, store, procs)
        restored = second.next_event("up")
        assert restored["epoch"] == up["epoch"]  # same epoch: the headset keeps its replica
        assert restored["seq"] >= seen  # nothing the headset saw was lost with the process
        assert client.wait_for(lambda: client.annotations.seq >= restored["seq"] + 40, 20.0)
        second.tell("stop")
        final = second.next_event("final")
        assert client.wait_for(lambda: client.annotations.seq == final["seq"], 10.0)
        applied = client.annotations.applied
        assert applied == list(range(applied[0], final["seq"] + 1))  # across the restart: once each, in order
        assert state_digest(client.annotations.state) == final["digest"]
        assert client.epoch == up["epoch"]
    second.tell("exit")
    second.proc.wait(10.0)
    assert [op.seq for op in AnnotationStore(store).ops()] == list(range(1, final["seq"] + 1))


def test_sigkilled_server_without_store_means_a_new_epoch_and_a_snapshot(setup: Any) -> None:
    tmp, headset_keys, config, procs = setup
    first = _start(tmp, config, None, procs)
    up = first.next_event("up")
    with HeadsetClient(headset_keys, config) as client:
        assert client.wait_for(lambda: client.annotations.seq >= 20, 20.0)
        first.kill()
        second = _start(tmp, config, None, procs)
        restarted = second.next_event("up")
        assert restarted["epoch"] != up["epoch"] and restarted["seq"] == 0
        assert client.wait_for(lambda: client.epoch == restarted["epoch"] and client.annotations.synced, 20.0)
        second.tell("stop")
        final = second.next_event("final")
        assert client.wait_for(lambda: client.annotations.seq == final["seq"], 10.0)
        assert state_digest(client.annotations.state) == final["digest"]  # the old epoch's state is gone


# ------------------------------------------------------------------ the store itself
def _ann(i: int, text: str = "") -> Annotation:
    return Annotation(f"a{i}", "point", "dr-m", "mentor", ((1.0, 2.0, float(i)),), 1000 + i, text=text)


def test_store_round_trip_and_append_only(tmp_path: Path) -> None:
    path = tmp_path / "ann.sqlite"
    log = AnnotationLog(store=AnnotationStore(path))
    log.apply("add", _ann(1))
    log.apply("add", _ann(2))
    log.apply("update", _ann(1, "moved"))
    log.apply("delete", "a2")
    again = AnnotationLog(store=AnnotationStore(path))
    assert (again.seq, again.state) == (log.seq, log.state)
    assert again.since(1) == log.since(1)  # headsets can catch up from the restored log
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM ops WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE ops SET id = 'a9' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="epoch is fixed"):
        db.execute("UPDATE meta SET value = 'other' WHERE key = 'epoch'")


def test_refused_op_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "ann.sqlite"
    log = AnnotationLog(store=AnnotationStore(path))
    log.apply("add", _ann(1))
    with pytest.raises(ValueError, match="id already present, got 'a1'"):
        log.apply("add", _ann(1))
    assert [op.seq for op in AnnotationStore(path).ops()] == [1]


def test_store_with_a_gap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ann.sqlite"
    log = AnnotationLog(store=AnnotationStore(path))
    log.apply("add", _ann(1))
    db = sqlite3.connect(path)
    body = json.dumps({"seq": 3, "op": "add", "id": "a3", "annotation": _ann(3).to_json()})
    db.execute("INSERT INTO ops VALUES (3, 'add', 'a3', ?)", (body,))
    db.commit()
    with pytest.raises(AnnotationStoreError, match=r"gap or an edit at op 3 \(expected 2\)"):
        AnnotationLog(store=AnnotationStore(path))


def test_store_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ann.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AnnotationStoreError, match="not a usable annotation store"):
        AnnotationStore(path)
