"""The mentor web server: the page, its script, token-checked signalling (aiohttp + aiortc).

``MentorServer`` runs its own asyncio loop in a thread, so a synchronous service can host
it: ``start()`` returns the base URL, ``stop()`` closes every peer connection. Routes:

* ``GET  /s/{session}``          the page (the token travels in the URL fragment, never to logs)
* ``GET  /static/{file}``        its script and style
* ``POST /s/{session}/config``   Bearer token -> role, camera, ICE servers (401 if refused)
* ``POST /s/{session}/offer``    Bearer token + SDP offer -> SDP answer (401 if refused)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from importlib import resources
from typing import Any, Final

from aiohttp import web

from mentor.config import MentorConfig
from mentor.hub import RoomHub
from mentor.room import MentorRoom
from mentor.signalling import SignallingError, bearer_token, parse_offer
from mentor.tokens import Claims, TokenError, verify

log = logging.getLogger(__name__)

STATIC_FILES: Final = {"mentor.js": "text/javascript", "mentor.css": "text/css", "index.html": "text/html"}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files("mentor").joinpath("static", name).read_bytes()


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class MentorServer:
    def __init__(self, config: MentorConfig | None = None) -> None:
        self.config = config or MentorConfig()
        self.rooms: dict[str, MentorRoom] = {}
        self.hubs: dict[str, RoomHub] = {}
        self.base_url = ""
        self._files = {name: _static(name) for name in STATIC_FILES}  # read once: a missing file fails here
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # -- synchronous API -----------------------------------------------------------
    def add_room(self, room: MentorRoom) -> None:
        with self._lock:
            if room.session in self.rooms:
                msg = f"a room for session {room.session!r} is already served"
                raise ValueError(msg)
            self.rooms[room.session] = room
            loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._open_hub(room), loop).result(timeout=10)

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="mentor-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            msg = f"mentor server did not start within 30 s on {self.config.host}:{self.config.port}"
            raise RuntimeError(msg)
        if self._failure is not None:
            msg = f"mentor server failed to start on {self.config.host}:{self.config.port}: {self._failure}"
            raise RuntimeError(msg) from self._failure
        return self.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = None

    def url_for(self, session: str, token: str) -> str:
        """The link a mentor opens; the token sits in the fragment, which browsers never send."""
        return f"{self.base_url}/s/{session}#token={token}"

    def call(self, fn: Any, *args: Any, timeout_s: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the server loop and return its result (tests, status pages)."""
        if self._loop is None:
            msg = f"mentor server is not running (loop {self._loop!r})"
            raise RuntimeError(msg)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=timeout_s)

    def __enter__(self) -> MentorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop thread ---------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:  # reported to start()'s caller
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=self.config.max_offer_bytes, middlewares=[_headers])
        app.router.add_get("/s/{session}", self._page)
        app.router.add_get("/static/{name}", self._file)
        app.router.add_post("/s/{session}/config", self._config)
        app.router.add_post("/s/{session}/offer", self._offer)
        app.router.add_get("/favicon.ico", _no_content)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self._ssl())
        await site.start()
        server: Any = site._server  # aiohttp keeps the bound sockets here; needed for port 0
        port = server.sockets[0].getsockname()[1]
        self.base_url = f"{self.config.scheme}://{self.config.host}:{port}"
        with self._lock:
            rooms = list(self.rooms.values())
        for room in rooms:
            await self._open_hub(room)
        log.info("mentor server on %s", self.base_url)

    def _ssl(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return ctx

    async def _open_hub(self, room: MentorRoom) -> None:
        if room.session not in self.hubs:
            hub = RoomHub(room, self.config, asyncio.get_running_loop())
            hub.start()
            self.hubs[room.session] = hub

    async def _shutdown(self) -> None:
        for hub in list(self.hubs.values()):
            await hub.stop()
        self.hubs.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers ------------------------------------------------------------------
    def _room(self, request: web.Request) -> MentorRoom | None:
        with self._lock:
            return self.rooms.get(request.match_info["session"])

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if self._room(request) is None:
            return _error(404, "no such session")
        return web.Response(body=self._files["index.html"], content_type="text/html")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES or name == "index.html":
            return _error(404, f"no static file {name[:40]!r}")
        return web.Response(body=self._files[name], content_type=STATIC_FILES[name])

    def _authorise(self, request: web.Request, room: MentorRoom) -> Claims | web.Response:
        try:
            return verify(room.token_secret, bearer_token(request.headers.get("Authorization")), room.session)
        except TokenError as exc:
            room.refused(str(exc), request.remote or "?")
            log.info("refused a mentor token for session %s: %s", room.session, exc)
            return _error(401, str(exc))

    def _authorised(self, request: web.Request) -> tuple[MentorRoom, Claims] | web.Response:
        """The session's room and the caller's claims, or the 404 / 401 answer."""
        room = self._room(request)
        if room is None:
            return _error(404, "no such session")
        claims = self._authorise(request, room)
        return claims if isinstance(claims, web.Response) else (room, claims)

    async def _config(self, request: web.Request) -> web.StreamResponse:
        found = self._authorised(request)
        if isinstance(found, web.Response):
            return found
        room, claims = found
        cam = room.camera
        return web.json_response(
            {
                "name": claims.name,
                "role": claims.role,
                "may_annotate": claims.may_annotate,
                "expires_at": claims.expires_at,
                "camera": {"width": cam.width, "height": cam.height},
                "ice_servers": [s.to_json() for s in self.config.ice_servers],
            }
        )

    async def _offer(self, request: web.Request) -> web.StreamResponse:
        found = self._authorised(request)
        if isinstance(found, web.Response):
            return found
        room, claims = found
        try:
            offer = parse_offer(await request.read(), self.config.max_offer_bytes)
        except SignallingError as exc:
            room.count("bad_offer")
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            room.count("bad_offer")
            return _error(413, f"offer over {self.config.max_offer_bytes} bytes, got {request.content_length!r}")
        try:
            answer = await self.hubs[room.session].connect(claims, offer)
        except Exception as exc:  # a broken offer must cost one error line, not the service
            room.count("bad_offer")
            log.warning("negotiation failed for session %s: %s", room.session, exc)
            return _error(400, f"could not negotiate the offer: {str(exc)[:200]}")
        return web.json_response(answer)


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)
