# -*- test-case-name: tests.unit.test_message -*-
"""
What plugins see: a L{Flow} per request with its L{Request} and, later,
its L{Response}; a L{ConnectTarget} per CONNECT.

Headers are L{twisted.web.http_headers.Headers}: multi-valued, names
case-insensitive, hop-by-hop headers already removed.  Framing headers
(Content-Length, Transfer-Encoding) are not shown: proxyd states the
framing itself for whatever body is finally sent.
"""

import itertools
from urllib.parse import urlsplit

import attr
from twisted.web.http_headers import Headers

from proxyd.errors import statusPhrase

_flowIds = itertools.count(1)


def _headers(value):
    if value is None:
        return Headers()
    if isinstance(value, Headers):
        return value
    headers = Headers()
    items = value.items() if isinstance(value, dict) else value
    for name, val in items:
        headers.addRawHeader(name, val)
    return headers


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


@attr.s(slots=True, eq=False)
class Request:
    """
    @ivar method: C{bytes}, e.g. C{b"GET"}.
    @ivar url: C{bytes}, absolute: C{b"http://example.com/a?b"} (forward),
        C{b"https://example.com/a"} (intercepted).  Change it to send the
        request somewhere else.
    @ivar headers: L{Headers}, end-to-end headers only; Host is the URL's
        authority unless the client said otherwise inside a tunnel.
    @ivar body: C{bytes} once a hook asked for it with READ_BODY, else None.
    @ivar version: C{b"1.1"} or C{b"1.0"}, as the client spoke.
    """

    method = attr.ib(converter=_bytes)
    url = attr.ib(converter=_bytes)
    headers = attr.ib(default=None, converter=_headers)
    body = attr.ib(default=None)
    version = attr.ib(default=b"1.1")

    @classmethod
    def new(cls, method, url, headers, version):
        """proxyd's own constructor, for values already of the right types."""
        self = object.__new__(cls)
        self.method = method
        self.url = url
        self.headers = headers
        self.body = None
        self.version = version
        return self

    @property
    def _parts(self):
        return urlsplit(self.url.decode("latin-1"))

    @property
    def scheme(self):
        """C{str}: C{"http"} or C{"https"}."""
        return self._parts.scheme.lower()

    @property
    def host(self):
        """C{str}: the URL's host, lower case, without brackets."""
        return (self._parts.hostname or "").lower()

    @property
    def port(self):
        """C{int}: the URL's port, or the scheme's default."""
        parts = self._parts
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None:
            return 443 if parts.scheme.lower() == "https" else 80
        return port

    @property
    def path(self):
        """C{bytes}: path and query, as sent on the request line."""
        parts = self._parts
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return path.encode("latin-1")

    def header(self, name, default=None):
        """The last value of header C{name} (bytes), or C{default}."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else default


@attr.s(slots=True, eq=False)
class Response:
    """
    @ivar status: C{int}.
    @ivar reason: C{bytes}; proxyd fills in the standard phrase when empty.
    @ivar headers: L{Headers}, end-to-end only, framing headers not shown.
    @ivar body: C{bytes} for a response made by a plugin, or once a hook
        asked for an upstream body with READ_BODY; else None (streamed).
    """

    status = attr.ib(converter=int)
    reason = attr.ib(default=b"", converter=_bytes)
    headers = attr.ib(default=None, converter=_headers)
    body = attr.ib(default=None, converter=lambda b: None if b is None else _bytes(b))

    @classmethod
    def new(cls, status, reason, headers):
        """proxyd's own constructor, for a streamed upstream response."""
        self = object.__new__(cls)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = None
        return self

    @classmethod
    def make(cls, status, body=b"", headers=None, reason=b""):
        """A complete response to answer with (block, mock, redirect)."""
        return cls(status, reason or statusPhrase(status), headers, body)

    @classmethod
    def text(cls, status, text, headers=None):
        """A text/plain (UTF-8) response."""
        response = cls.make(status, text, headers)
        if not response.headers.hasHeader(b"content-type"):
            response.headers.setRawHeaders(b"Content-Type", [b"text/plain; charset=utf-8"])
        return response

    @classmethod
    def redirect(cls, location, status=302):
        """A redirect to C{location} (a 3xx status)."""
        response = cls.text(status, "Redirecting to {}\n".format(_bytes(location).decode("latin-1")))
        response.headers.setRawHeaders(b"Location", [_bytes(location)])
        return response

    def header(self, name, default=None):
        """The last value of header C{name} (bytes), or C{default}."""
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else default


@attr.s(slots=True, eq=False)
class Flow:
    """
    One request and its response, as they pass through the plugins.

    @ivar id: C{int}, unique in this process.
    @ivar mode: C{"forward"}, C{"mitm"} or C{"reverse"}.
    @ivar client: C{str}, the client's address.
    @ivar request: the L{Request}.
    @ivar response: the L{Response}, once there is one.
    @ivar notes: C{dict} for plugins to keep per-request state across hooks.
    @ivar started: C{float}, seconds since the epoch when the head arrived.
    """

    request = attr.ib()
    mode = attr.ib(default="forward")
    client = attr.ib(default="127.0.0.1")
    response = attr.ib(default=None)
    notes = attr.ib(factory=dict)
    started = attr.ib(default=0.0)
    id = attr.ib(factory=lambda: next(_flowIds))

    @classmethod
    def new(cls, request, mode, client, started):
        """proxyd's own constructor (one per request with plugins on)."""
        self = object.__new__(cls)
        self.request = request
        self.mode = mode
        self.client = client
        self.response = None
        self.notes = {}
        self.started = started
        self.id = next(_flowIds)
        return self


@attr.s(slots=True, frozen=True)
class ConnectTarget:
    """
    A CONNECT as connect policies see it.

    @ivar host: C{str}, lower case (a name or an address).
    @ivar port: C{int}.
    @ivar sni: C{str} the client's TLS server name, or None (not seen yet,
        or the client sent none).
    @ivar client: C{str}, the client's address.
    """

    host = attr.ib()
    port = attr.ib()
    sni = attr.ib(default=None)
    client = attr.ib(default="127.0.0.1")
