"""Run the reference client as a process: ``python -m headset_bridge.refclient``.

Prints one JSON line per change of its annotation state and per navigation
registration verdict the server reports (for tests and demos), and can persist a resume state so a restarted headset only fetches what it missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from domain.atomic_file import atomic_write
from headset_bridge.annotations import state_digest
from headset_bridge.client import ClientConfig, HeadsetClient, ResumeState
from headset_bridge.keys import load_keypair, load_public
from headset_bridge.messages import Annotation


def _load_resume(path: Path | None) -> ResumeState | None:
    if path is None or not path.exists():
        return None
    data = json.loads(path.read_text())
    anns = tuple(Annotation.from_json(a) for a in data["annotations"])
    return ResumeState(str(data["epoch"]), int(data["seq"]), anns)


def _save_resume(path: Path, state: ResumeState) -> None:
    data = {"epoch": state.epoch, "seq": state.seq, "annotations": [a.to_json() for a in state.annotations]}
    with atomic_write(path) as f:  # a kill leaves the old or the new file, never half
        f.write(json.dumps(data).encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pub", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--server-key", type=Path, required=True, help="server public certificate")
    ap.add_argument("--key", type=Path, required=True, help="this headset's secret certificate")
    ap.add_argument("--state", type=Path, help="resume-state file (read at start, written as it changes)")
    ap.add_argument("--save-every", type=float, default=0.05)
    args = ap.parse_args(argv)
    config = ClientConfig(args.pub, args.ctl, load_public(args.server_key))
    resume = _load_resume(args.state)
    client = HeadsetClient(load_keypair(args.key), config, resume=resume)
    client.on_registration = lambda v: print(json.dumps({"event": "registration", **v.to_json()}), flush=True)
    print(json.dumps({"event": "start", "resumed_from": None if resume is None else resume.seq}), flush=True)
    last_seq, last_save = -2, 0.0
    try:
        while True:
            client.poll(0.02)
            rep = client.annotations
            if rep.seq != last_seq:
                last_seq = rep.seq
                print(
                    json.dumps(
                        {
                            "event": "ann",
                            "seq": rep.seq,
                            "digest": state_digest(rep.state),
                            "applied": rep.applied,
                            "duplicates": rep.duplicates,
                        }
                    ),
                    flush=True,
                )
            now = time.monotonic()
            if args.state is not None and now - last_save > args.save_every and (st := client.resume_state()):
                _save_resume(args.state, st)
                last_save = now
                print(json.dumps({"event": "saved", "seq": st.seq}), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
