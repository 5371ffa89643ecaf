"""Reading OpenIGTLink messages off a socket, defensively.

pyigtl's own reader trusts the peer: no CRC check, no size limit, and an exception in a
decoder ends the connection. Here a bad *message* (CRC, unknown type, oversize, content
that does not decode) is consumed and reported while the stream stays in step; only a
header that cannot be parsed ends the connection, because nothing after it can be framed.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from pyigtl.messages import CRC64, MessageBase, PointMessage, StringMessage, TransformMessage

HEADER_BYTES = MessageBase.IGTL_HEADER_SIZE  # 58
_HEADER = struct.Struct("> H 12s 20s II Q Q")
DECODERS: dict[str, Any] = {"TRANSFORM": TransformMessage, "POINT": PointMessage, "STRING": StringMessage}
_CHUNK = 1 << 16


class FramingError(Exception):
    """The byte stream cannot be framed any more; the connection must close."""


class MessageError(ValueError):
    """One message was refused; the stream is still in step."""

    def __init__(self, text: str, message_type: str, device: str) -> None:
        super().__init__(text)
        self.message_type = message_type
        self.device = device


@dataclass(frozen=True)
class Header:
    version: int
    message_type: str
    device: str
    fields: dict[str, Any]  # pyigtl's parsed header, for MessageBase.unpack
    body_size: int
    crc: int


def parse_header(raw: bytes) -> Header:
    version, mtype, dev, _, _, size, crc = _HEADER.unpack(raw)
    try:
        fields = MessageBase.parse_header(raw)
        text_ok = all(c.isprintable() for c in fields["message_type"] + fields["device_name"])
    except UnicodeDecodeError:
        text_ok = False
    if version not in (1, 2) or not text_ok:
        msg = f"unparseable OpenIGTLink header: version {version}, type {mtype!r}, device {dev!r}"
        raise FramingError(msg)
    return Header(version, fields["message_type"], fields["device_name"], fields, size, crc)


class Reader:
    """Reads one message at a time from a connected socket (blocking, with a stall limit)."""

    def __init__(self, sock: socket.socket, max_body: int, stall_s: float, stop: threading.Event) -> None:
        self.sock, self.max_body, self.stall_s, self.stop = sock, max_body, stall_s, stop

    def next(self) -> Any | None:
        """The next decoded pyigtl message, None when the peer closed between messages;
        MessageError for a refused message, FramingError when the stream is lost."""
        raw = self._exact(HEADER_BYTES, idle_ok=True)
        if raw is None:
            return None
        head = parse_header(raw)
        if head.body_size > self.max_body:
            self._discard(head.body_size)
            msg = f"{head.message_type} body of {head.body_size} bytes exceeds the {self.max_body}-byte limit"
            raise MessageError(msg, head.message_type, head.device)
        body = self._exact(head.body_size, idle_ok=False) if head.body_size else b""
        assert body is not None  # idle_ok=False never returns None
        return decode(head, body)

    def _exact(self, n: int, *, idle_ok: bool) -> bytes | None:
        buf = bytearray()
        last = time.monotonic()
        while len(buf) < n:
            if self.stop.is_set():
                raise FramingError("link stopping")
            try:
                chunk = self.sock.recv(min(n - len(buf), _CHUNK))
            except TimeoutError:
                if (idle_ok and not buf) or time.monotonic() - last < self.stall_s:
                    continue
                msg = f"peer stalled for {self.stall_s:g} s inside a message ({len(buf)}/{n} bytes)"
                raise FramingError(msg) from None
            if not chunk:
                if idle_ok and not buf:
                    return None
                msg = f"peer closed inside a message ({len(buf)}/{n} bytes)"
                raise FramingError(msg)
            buf += chunk
            last = time.monotonic()
        return bytes(buf)

    def _discard(self, n: int) -> None:
        while n > 0:
            step = min(n, _CHUNK)
            self._exact(step, idle_ok=False)
            n -= step


def decode(head: Header, body: bytes) -> Any:
    """Check CRC and decode with pyigtl, or MessageError naming what is wrong."""
    if CRC64(body) != head.crc:
        msg = f"{head.message_type} {head.device!r}: CRC mismatch"
        raise MessageError(msg, head.message_type, head.device)
    cls = DECODERS.get(head.message_type)
    if cls is None:
        msg = f"unexpected message type {head.message_type!r} (this link accepts {sorted(DECODERS)})"
        raise MessageError(msg, head.message_type, head.device)
    message = cls()
    try:
        message.unpack(head.fields, body)
    except Exception as exc:  # pyigtl raises struct.error, UnicodeDecodeError, TypeError...
        msg = f"{head.message_type} {head.device!r} does not decode: {type(exc).__name__}: {exc}"
        raise MessageError(msg, head.message_type, head.device) from None
    return message
