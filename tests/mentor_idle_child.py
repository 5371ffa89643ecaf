"""Child of tests/test_mentor_hardening.py: a mentor server in a process whose descriptor
limit is 1024 (soft and hard, so the server cannot raise it), logging to stderr. Prints one
JSON line (base URL, session, a mentor token), then serves until stdin closes."""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

FD_LIMIT = 1024


def main() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from mentor_fixtures import CAMERA, SESSION, Published, make_scene

    from mentor.config import MentorConfig
    from mentor.room import MentorRoom
    from mentor.server import MentorServer
    from mentor.tokens import issue, new_secret

    secret = new_secret()
    room = MentorRoom(SESSION, secret, make_scene().caster, CAMERA, Published(), None)
    with MentorServer(MentorConfig()) as server:
        server.add_room(room)
        print(json.dumps({"url": server.base_url, "session": SESSION, "token": issue(secret, SESSION, "mentor", "m")}))
        sys.stdout.flush()
        sys.stdin.read()  # until the parent closes the pipe


if __name__ == "__main__":
    main()
