"""The mentor web server: the page, its script, token-checked signalling (aiohttp + aiortc).

``MentorServer`` runs its own asyncio loop in a thread, so a synchronous service can host
it: ``start()`` returns the base URL, ``stop()`` closes every peer connection. Routes:

* ``GET  /s/{session}``          the page (the token travels in the URL fragment, never to logs)
* ``GET  /static/{file}``        its script and style
* ``POST /s/{session}/config``   Bearer token -> role, camera, ICE servers (401 if refused)
* ``POST /s/{session}/offer``    Bearer token + SDP offer -> SDP answer (401 if refused)
* ``GET  /s/{session}/model.glb`` Bearer token -> the patient model for the page's 3D view
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from http import HTTPStatus
from importlib import resources
from typing import Any, Final

from aiohttp import web

from mentor.config import MentorConfig
from mentor.guard import ConnectionGuard, LoopErrorFilter, RateLimitedLog, connection_cap, raise_fd_limit
from mentor.hub import OfferRefused, PendingLimit, RoomHub
from mentor.model_view import GLB_CONTENT_TYPE, VIEW3D_FILES, room_glb
from mentor.room import MentorRoom
from mentor.signalling import SignallingError, bearer_token, parse_offer
from mentor.tokens import Claims, TokenError, verify

log = logging.getLogger(__name__)
_http_errors = RateLimitedLog(log)  # malformed requests: one line each, within a budget

STATIC_FILES: Final = {"mentor.js": "text/javascript", "mentor.css": "text/css", "index.html": "text/html"}
STATIC_FILES.update(VIEW3D_FILES)  # the 3D view, occlusion drawing and the vendored three.js
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SERVER_NAME: Final = "scrubin"  # in place of aiohttp's "Python/3.x aiohttp/3.x": no versions to probe
LINGER_S: Final = 1.0  # an unread request body is drained this long at most (aiohttp: 10 s)
# asyncio also accepts up to this many connections per loop turn: a larger batch would let
# a flood push out a person's connection before its request is read.
LISTEN_BACKLOG: Final = 128
NO_SESSION_PAGE: Final = (
    b"<!doctype html><html lang=en><head><meta charset=utf-8><title>No such session</title></head>"
    b"<body><h1>No such mentor session</h1><p>This link names a session that is not running here. "
    b"Check the link you were sent, or ask the theatre team for a new one.</p></body></html>"
)


def _static(name: str) -> bytes:
    return resources.files("mentor").joinpath("static", *name.split("/")).read_bytes()


def _error(status: int, text: str, code: str | None = None) -> web.Response:
    """A JSON error; ``code`` is machine-readable: the page stops retrying on the final ones."""
    body = {"error": text} if code is None else {"error": text, "code": code}
    return web.json_response(body, status=status)


def refusal_code(exc: TokenError) -> str:
    """The page's reason code for a refused token: an expired link asks for a new one."""
    return "token_expired" if str(exc) == "token expired" else "token_refused"


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
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.guard: ConnectionGuard | None = None  # the HTTP connection limits, once started

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
        app = web.Application(client_max_size=self.config.max_offer_bytes, middlewares=[_headers, self._guarded])
        app.on_response_prepare.append(_hide_server)
        app.router.add_get("/s/{session}", self._page)
        app.router.add_get("/static/{name:[A-Za-z0-9_./-]+}", self._file)  # looked up in STATIC_FILES only
        app.router.add_get("/s/{session}/model.glb", self._model)
        app.router.add_post("/s/{session}/config", self._config)
        app.router.add_post("/s/{session}/offer", self._offer)
        app.router.add_get("/favicon.ico", _no_content)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        port = await self._listen(self._runner)
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

    async def _listen(self, runner: web.AppRunner) -> int:
        """Listen through our own protocol factory (not aiohttp's TCPSite): each connection
        passes the connection guard before aiohttp sees it. Returns the bound port."""
        cfg, loop = self.config, asyncio.get_running_loop()
        fds = raise_fd_limit() if cfg.raise_fd_limit else _fd_soft_limit()
        total = connection_cap(cfg.max_connections, fds)
        if total < cfg.max_connections:
            log.info("mentor server: %d connections at most (half of %d descriptors)", total, fds)
        guard = ConnectionGuard(
            total, min(total, cfg.max_connections_per_ip), cfg.header_timeout_s, cfg.keepalive_timeout_s
        )
        loop.set_exception_handler(LoopErrorFilter())
        manager = runner.server
        assert manager is not None  # set by runner.setup()
        kwargs: dict[str, Any] = {
            "keepalive_timeout": cfg.keepalive_timeout_s,
            "lingering_time": LINGER_S,
            "access_log": None,
            "logger": log,
        }

        def factory() -> _GuardedHandler:
            return _GuardedHandler(manager, guard, loop=loop, **kwargs)

        tls = self._ssl()
        self._listener = await loop.create_server(
            factory,
            cfg.host,
            cfg.port,
            ssl=tls,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
            # The guard sees a TLS connection only after its handshake: bound that too.
            ssl_handshake_timeout=cfg.header_timeout_s if tls is not None else None,
        )
        self.guard = guard
        self._sweeper = loop.create_task(guard.run(), name="mentor-connection-guard")
        return int(self._listener.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections while the peers say goodbye
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.guard is not None:
            self.guard.report_final()
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
        if self._room(request) is None:  # a person follows this link: a page, not JSON
            return web.Response(status=404, body=NO_SESSION_PAGE, content_type="text/html")
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
            return _error(401, str(exc), refusal_code(exc))

    def _authorised(self, request: web.Request) -> tuple[MentorRoom, Claims] | web.Response:
        """The session's room and the caller's claims, or the 404 / 401 answer."""
        room = self._room(request)
        if room is None:
            return _error(404, "no such session", "no_session")
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

    async def _model(self, request: web.Request) -> web.StreamResponse:
        """The patient model for the 3D view (Bearer token, like every session route)."""
        found = self._authorised(request)
        if isinstance(found, web.Response):
            return found
        glb = await asyncio.get_running_loop().run_in_executor(None, room_glb, found[0])
        return web.Response(body=glb, content_type=GLB_CONTENT_TYPE)

    async def _offer(self, request: web.Request) -> web.StreamResponse:
        found = self._authorised(request)
        if isinstance(found, web.Response):
            return found
        room, claims = found
        try:
            body = await asyncio.wait_for(request.read(), self.config.body_timeout_s)
            offer = parse_offer(body, self.config.max_offer_bytes)
        except TimeoutError:
            room.count("bad_offer")
            late = _error(408, f"offer body not received within {self.config.body_timeout_s:g} s")
            late.force_close()  # the rest of that body is not worth waiting for
            return late
        except SignallingError as exc:
            room.count("bad_offer")
            return _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            room.count("bad_offer")
            return _error(413, f"offer over {self.config.max_offer_bytes} bytes, got {request.content_length!r}")
        try:
            answer = await self.hubs[room.session].connect(claims, offer)
        except PendingLimit as exc:
            room.count("busy")
            return _error(503, str(exc), "busy")
        except Exception as exc:  # a broken offer must cost one error line, not the service
            room.count("bad_offer")
            log.warning("negotiation failed for session %s: %s", room.session, _short(exc))
            # Our own refusals say what is missing; a library's exception text stays in the log.
            why = str(exc) if isinstance(exc, OfferRefused) else "its SDP was not understood"
            return _error(400, f"could not negotiate the offer: {why}")
        return web.json_response(answer)

    @web.middleware
    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Marks the connection busy while its request is handled (busy ones are never closed
        for newer ones) and turns every failure into a short JSON answer, one log line each."""
        guard, conn = self.guard, request.protocol
        if guard is not None:
            guard.busy(conn)
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # the router's 404 / 405, a body over the limit
            if exc.status < 400:
                raise
            response = _error(exc.status, _phrase(exc.status))
        except Exception as exc:
            log.error("mentor request %s %s failed: %s", request.method, request.path[:80], _short(exc))
            response = _error(500, "internal server error")
        finally:
            if guard is not None:
                guard.idle(conn)
        return response


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def _no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def _hide_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME  # aiohttp adds its own (with versions) only when absent


def _short(exc: BaseException) -> str:
    """An exception as one short log line: its class and the start of its message, quoted."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]!r}"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _fd_soft_limit() -> int:
    import resource

    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class _GuardedHandler(web.RequestHandler):
    """aiohttp's HTTP protocol behind the connection guard, with one-line errors.

    A connection the guard refuses is closed before aiohttp sets anything up for it. A request
    aiohttp cannot parse (bad request line, header, length) gets a short generic answer and
    one log line: never the parser's exception text, never a traceback.
    """

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.admit(self, ip, transport):
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        task, busy = self._task_handler, self._guard.is_busy(self)
        self._guard.release(self)
        super().connection_lost(exc)
        # Between requests aiohttp may still be draining an unread body of this gone client
        # (for up to its lingering time, out of reach of its own shutdown): end that now.
        # A request being handled is left alone: a peer's negotiation must finish or undo.
        if task is not None and not busy and not task.done():
            task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._admitted:
            super().eof_received()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        what = _short(exc) if isinstance(exc, BaseException) else "no detail"
        _http_errors.info("mentor server: %s (%s)", str(args[0])[:80] if args else "HTTP error", what)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's own: the answer is already under way
            msg = f"cannot answer {status}: the response is already being sent"
            raise ConnectionError(msg)
        remote = getattr(request, "remote", None) or "?"
        what = _short(exc) if exc is not None else (message or "")[:80]
        _http_errors.info("mentor server: bad HTTP request from %s, answered %d: %s", remote, status, what)
        phrase = _phrase(status)
        response = web.json_response(
            {"error": phrase}, status=status, headers={**SECURITY_HEADERS, "Server": SERVER_NAME}
        )
        response.force_close()
        return response
