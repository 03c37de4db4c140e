# -*- test-case-name: tests.unit.test_sniff -*-
"""
Sans-I/O look at a client's first bytes in a CONNECT tunnel: TLS, plain HTTP
or other, and for TLS the ClientHello's SNI, ALPN and versions.  The hello is
parsed here (RFC 8446 4.1.2, RFC 6066, RFC 7301) because mitm must choose a
leaf, or to tunnel blind, before a TLS engine sees the bytes, which are then
replayed from L{ClientHello.raw}.  Bad input raises L{ClientHelloError} and
nothing else, so the caller has one thing to catch.  No Twisted imports.
"""

import ipaddress
import re
from dataclasses import dataclass, replace

TLS = "tls"
HTTP = "http"
OTHER = "other"
NEED_MORE = "need-more"

# The methods proxyd's HTTP reader (llhttp) accepts.  Anything else is
# tunnelled blind rather than answered with a 400.  "PRI * HTTP/2.0" (HTTP/2
# with prior knowledge) is deliberately absent: proxyd does not speak h2, so
# that preface classifies as OTHER and the tunnel carries it untouched.
_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH COPY LOCK MKCOL "
    b"MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT "
    b"MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE "
    b"MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_PREFIXES = tuple(m + b" " for m in _METHODS) + (b"\x16\x03",)


def classify(data):
    """
    Say what C{data}, the first bytes after a CONNECT, is: L{TLS} (a
    handshake record, version major 3), L{HTTP} (a known method and a
    space), L{OTHER}, or L{NEED_MORE} while C{data} is still a proper prefix
    of a TLS or HTTP start (at most 12 bytes are ever needed).
    """
    data = bytes(data[:12])
    if data.startswith(b"\x16\x03"):
        return TLS
    space = data.find(b" ")
    if space > 0 and data[:space] in _METHODS:
        return HTTP
    if any(p.startswith(data) for p in _PREFIXES):
        return NEED_MORE
    return OTHER


class ClientHelloError(Exception):
    """Not a ClientHello proxyd handles; the message is a short reason."""


@dataclass
class ClientHello:
    """
    What proxyd needs from a ClientHello.

    @ivar sni: the host_name from server_name, lower-cased, or L{None}.  An
        IP literal is not allowed there by RFC 6066 but some clients send
        one; it is kept as given and the caller decides what to do with it.
    @ivar alpn: the ALPN protocol names offered, in order, decoded as
        latin-1 so any byte string (GREASE included) survives the round trip.
    @ivar legacy_version: the hello's legacy_version, e.g. C{0x0303}.
    @ivar supported_versions: the supported_versions extension without
        GREASE values, or L{None} when absent.
    @ivar raw: every byte fed so far, to replay into a TLS engine.
    """

    sni: str | None
    alpn: list[str]
    legacy_version: int
    supported_versions: list[int] | None
    raw: bytes

    @property
    def versions(self):
        """The versions the client offers, newest-first as it sent them."""
        if self.supported_versions is not None:
            return list(self.supported_versions)
        return [self.legacy_version]


MAX_HELLO = 16384  # bytes of handshake message, its 4-byte header included
MAX_RECORDS = 64  # handshake records a hello may be spread over
_MAX_FRAGMENT = 2**14  # RFC 8446 5.1: TLSPlaintext.length limit
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")  # "_" occurs in the wild
_IP_CHARS = frozenset("0123456789abcdefABCDEF:.")


class _Cursor:
    """Bounds-checked reads over a buffer: overruns become ClientHelloError."""

    def __init__(self, data, what="ClientHello"):
        self.data, self.pos, self.what = bytes(data), 0, what

    def take(self, n):
        if n > len(self.data) - self.pos:
            raise ClientHelloError(f"truncated {self.what}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def vector(self, width, what, minimum=0):
        """A length-prefixed vector, as a cursor over exactly its bytes."""
        n = int.from_bytes(self.take(width), "big")
        if n < minimum:
            raise ClientHelloError(f"{what} too short")
        if n > len(self.data) - self.pos:
            raise ClientHelloError(f"{what} overruns its container")
        return _Cursor(self.take(n), what)

    def done(self):
        return self.pos == len(self.data)

    def end(self):
        if self.pos != len(self.data):
            raise ClientHelloError(f"trailing bytes in {self.what}")


def _hostName(data):
    """RFC 6066 host_name: an ASCII DNS name (lower-cased) or an IP literal."""
    try:
        name = data.decode("ascii")
    except UnicodeDecodeError:
        raise ClientHelloError("non-ASCII SNI host name") from None
    if set(name) <= _IP_CHARS:
        try:
            ipaddress.ip_address(name)
            return name
        except ValueError:
            pass
    name = name.lower()
    labels = name.split(".")
    if len(name) > 253 or labels[-1].isdigit() or not all(map(_LABEL.match, labels)):
        raise ClientHelloError("bad SNI host name")
    return name


def _parseBody(body, raw):
    """Parse a complete ClientHello body (after the handshake header)."""
    c = _Cursor(body)
    legacyVersion = c.u16()
    if legacyVersion >> 8 != 3:
        raise ClientHelloError("unsupported legacy_version")
    c.take(32)  # random
    if len(c.vector(1, "session id").data) > 32:
        raise ClientHelloError("session id too long")
    if len(c.vector(2, "cipher suites", 2).data) % 2:
        raise ClientHelloError("odd cipher suites length")
    c.vector(1, "compression methods", 1)
    sni, alpn, versions, seen = None, [], None, set()
    if not c.done():  # extensions are optional before TLS 1.3
        exts = c.vector(2, "extensions")
        c.end()
        while not exts.done():
            kind = exts.u16()
            ext = exts.vector(2, "extension")
            if kind in seen:
                raise ClientHelloError(f"duplicate extension {kind}")
            seen.add(kind)
            if kind == 0:  # server_name
                names = ext.vector(2, "server_name list", 1)
                while not names.done():
                    nameType = names.take(1)
                    host = names.vector(2, "host_name", 1)
                    if nameType == b"\x00":
                        if sni is not None:
                            raise ClientHelloError("two SNI host names")
                        sni = _hostName(host.data)
            elif kind == 16:  # application_layer_protocol_negotiation
                protos = ext.vector(2, "ALPN list", 2)
                while not protos.done():
                    name = protos.vector(1, "ALPN name", 1).data
                    alpn.append(name.decode("latin-1"))
            elif kind == 43:  # supported_versions
                vs = ext.vector(1, "supported_versions", 2)
                if len(vs.data) % 2:
                    raise ClientHelloError("odd supported_versions length")
                versions = []
                while not vs.done():
                    v = vs.u16()
                    if v & 0x0F0F != 0x0A0A:  # RFC 8701 GREASE
                        versions.append(v)
            else:
                ext.take(len(ext.data))
            ext.end()
    return ClientHello(sni, alpn, legacyVersion, versions, raw)


class ClientHelloReader:
    """
    Accumulates the client's first bytes until a whole ClientHello is seen,
    reassembling it across TCP segments and across handshake records.

    L{result} is L{None} until the hello is complete, then a L{ClientHello}.
    L{feed} raises L{ClientHelloError} as soon as the bytes prove malformed
    (and again on every later call); a truncated but so-far valid hello is
    not an error.  Beyond what one L{feed} brings, at most C{max_size + 5 *
    MAX_RECORDS} bytes are buffered before the hello is complete.
    """

    def __init__(self, max_size=MAX_HELLO):
        self.max_size = max_size
        self.result = None
        self._raw = bytearray()
        self._pos = 0  # start of the first record not yet consumed
        self._handshake = bytearray()
        self._records = 0
        self._error = None

    def feed(self, data):
        """
        Add C{data}; return L{result}.  Bytes fed after the hello is complete
        only extend C{result.raw}: callers stop feeding once they have it.
        """
        if self._error is not None:
            raise self._error
        self._raw += data
        if self.result is not None:
            self.result = replace(self.result, raw=bytes(self._raw))
            return self.result
        try:
            self._advance()
        except ClientHelloError as e:
            self._error = e
            raise
        return self.result

    def _advance(self):
        """Consume whole records, checking each as early as its bytes allow."""
        raw = self._raw
        while True:
            start = self._pos
            header = raw[start : start + 5]
            if header[:1] and header[0] != 0x16:
                if header[0] & 0x80:
                    raise ClientHelloError("SSLv2-style ClientHello")
                raise ClientHelloError("not a TLS handshake record")
            if len(header) >= 2 and header[1] != 3:
                raise ClientHelloError("bad TLS record version")
            if len(header) < 5:
                return
            length = int.from_bytes(header[3:5], "big")
            if length == 0:
                raise ClientHelloError("empty handshake record")
            if length > _MAX_FRAGMENT:
                raise ClientHelloError("TLS record too long")
            if self._records >= MAX_RECORDS:
                raise ClientHelloError("ClientHello spread over too many records")
            body, have = start + 5, len(raw) - start - 5
            head = self._handshake[:4]
            if len(head) < 4:
                head += raw[body : body + min(have, length, 4 - len(head))]
            total = len(self._handshake) + length
            needed = self._checkHandshake(head, total)
            if have < length:
                return
            self._records += 1
            self._pos = body + length
            self._handshake += raw[body : body + length]
            if total == needed:
                self.result = _parseBody(self._handshake[4:], bytes(raw))
                return

    def _checkHandshake(self, head, total):
        """
        Check the handshake header as soon as its bytes arrive (C{head}, up
        to 4 bytes), and that the record being read, ending at C{total}
        handshake bytes, stops within the hello.  Return the hello's length
        once known.
        """
        if head[:1] and head[0] != 1:
            raise ClientHelloError("handshake message is not a ClientHello")
        if len(head) < 4:
            return None
        needed = 4 + int.from_bytes(head[1:4], "big")
        if needed > self.max_size:
            raise ClientHelloError(f"ClientHello larger than {self.max_size} bytes")
        if total > needed:
            raise ClientHelloError("handshake record runs past the ClientHello")
        return needed
