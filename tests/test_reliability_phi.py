"""No patient-identifying value leaves imaging (issue 7, hostile input / PHI): a CT seeded with
PHI is prepared into a patient model, the model is streamed over the bridge to a reference
headset that captures the bytes of every message it receives, and no seeded value (name,
IDs, birth date, institution, accession number, any DICOM UID) appears in any output file or
any captured socket payload.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import zmq
from bridge_fixtures import ann, make_bridge, pose
from dicom_factory import PHI, head_like_volume, write_series

from headset_bridge.client import HeadsetClient
from imaging.prepare import PrepareOptions, prepare_path

STUDY_UID = "1.2.826.0.1.3680043.8.498.77123456789"
SERIES_UID = "1.2.826.0.1.3680043.8.498.88123456789"


class CapturingClient(HeadsetClient):
    """The reference client, keeping the raw bytes of every frame it receives (both sockets)."""

    captured: list[bytes]

    def _recv_all(self, sock: zmq.Socket[Any], copy: bool) -> list[tuple[list[Any], int]]:
        batch = super()._recv_all(sock, copy)
        store = self.__dict__.setdefault("captured", [])
        for frames, _ in batch:
            store.extend(f if isinstance(f, bytes) else bytes(f.buffer) for f in frames)
        return batch


def _needles(folder: Path) -> list[str]:
    """Every seeded value and UID in the input, and each name part or word of 4+ characters."""
    values = list(PHI.values()) + [STUDY_UID, SERIES_UID]
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        values += [str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID), str(ds.file_meta.MediaStorageSOPInstanceUID)]
    parts = {p for v in values for p in re.split(r"[\^ ]", v) if len(p) >= 4}
    return sorted(set(values) | parts)


def _leaks(needles: list[str], blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    forms = {n: [f.encode(e) for f in {n, n.lower(), n.upper()} for e in ("utf-8", "utf-16-le")] for n in needles}
    return [(where, n) for n in needles for where, blob in blobs.items() if any(f in blob for f in forms[n])]


def test_seeded_phi_reaches_no_file_and_no_socket(tmp_path: Path) -> None:
    dicom = tmp_path / "in"
    write_series(dicom, head_like_volume((20, 48, 48)), phi=True, study_uid=STUDY_UID, series_uid=SERIES_UID)
    needles = _needles(dicom)
    assert _leaks(needles, {"input": (dicom / "IM0000.dcm").read_bytes()})  # the search finds them in the input

    out = tmp_path / "model"
    prepare_path(dicom, out, PrepareOptions(segments=("skin",)))
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    glb = files["model.glb"]

    bridge = make_bridge(chunk_size=4096)  # many chunks: many socket messages to search
    client = CapturingClient(bridge.headset_keys["hl-a"], bridge.config())
    try:
        bridge.server.set_model(glb)
        bridge.server.annotate("add", ann(1, "mark here"))
        seq = iter(range(1, 10_000))

        def model_arrived() -> bool:
            bridge.server.publish_pose(pose(next(seq)))  # keepalive traffic, as in theatre
            return client.model == glb

        assert client.wait_for(model_arrived, 20.0)
        assert client.annotations.seq == 1
    finally:
        client.close()
        bridge.server.stop()

    captured = client.captured
    assert len(captured) > 3 * (len(glb) // 4096)  # every chunk and every other message was captured
    blobs = {**files, **{f"socket[{i}]": b for i, b in enumerate(captured)}, "socket[all]": b"".join(captured)}
    assert _leaks(needles, blobs) == []
    assert np.frombuffer(glb[:4], np.uint8).tobytes() == b"glTF"  # what was streamed is the model
