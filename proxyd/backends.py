# -*- test-case-name: tests.unit.test_backends -*-
"""
Reverse mode's backends: C{--upstream} and C{--route} URLs, a round robin
that leaves a dead backend out for a doubling back-off, and the choice of
a group by Host.  Sans-I/O: time is a clock's C{seconds()}, and the caller
reports each connect with L{BackendGroup.failed} or C{succeeded}.
"""

import fnmatch
import ipaddress
from dataclasses import dataclass

_PORTS = {"http": 80, "https": 443}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
# RFC 3986 pchar and "/": what a path may hold without being re-encoded.
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%")
_GLOB_CHARS = frozenset("*?")


@dataclass(frozen=True)
class Backend:
    """
    One backend URL, split once at start-up.

    @ivar prefix: the URL's path without its trailing slash, so that
        C{http://b/app/} and C{http://b/app} both send C{/x} as C{/app/x}.
    """

    url: str
    scheme: str
    host: str
    port: int
    prefix: bytes

    @property
    def tlsName(self):
        """The name checked on the backend's certificate (and sent as SNI unless an IP)."""
        return self.host if self.scheme == "https" else None

    @property
    def key(self):
        """The upstream pool key: https keys carry the TLS name so plain and TLS never mix."""
        if self.scheme == "https":
            return ("https", self.host, self.port, self.tlsName)
        return (self.host, self.port)

    def pathFor(self, target):
        """The request target sent to the backend: the prefix, then the client's target."""
        return target if target == b"*" else self.prefix + target


def describe(backend):
    """How logs name a backend: its URL as the operator wrote it."""
    return backend.url


def parseBackend(text):
    """
    A backend URL: C{http://} or C{https://}, a host (name, IPv4 or
    C{[IPv6]}), an optional port and path prefix.

    @raise ValueError: one line saying what is wrong, naming the URL.
    """
    url = text.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _PORTS:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{url!r}: a backend URL has no query or fragment")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise ValueError(f"{url!r}: user information is not allowed in a backend URL")
    try:
        host, port = _splitHostPort(authority, _PORTS[scheme])
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    path = slash + path
    if not set(path) <= _PATH_CHARS:
        raise ValueError(f"{url!r}: the path has characters a URL cannot hold unencoded")
    return Backend(url, scheme, host, port, path.rstrip("/").encode("ascii"))


def _splitHostPort(authority, defaultPort):
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("no ']' after the IPv6 address")
        host, rest = _ipv6(authority[1:end]), authority[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("only a port may follow the IPv6 address")
        port = rest[1:] if rest else None
    else:
        host, sep, port = authority.partition(":")
        if ":" in port:
            raise ValueError("an IPv6 address goes in brackets, as in http://[::1]:8080")
        host, port = _hostName(host), port if sep else None
    if port is None:
        return host, defaultPort
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port {port!r}")
    return host, int(port)


def _ipv6(text):
    """The canonical spelling, so that C{[::0001]} and C{[::1]} are one host."""
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 address") from None


def _hostName(host, allowed=_NAME_CHARS):
    """A lower-case DNS name (IDNA if international) or IPv4; with C{allowed} widened, a glob."""
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host
    if not host:
        raise ValueError("no host")
    if host.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"bad host name {host!r}") from None
    if not all(label and set(label) <= allowed for label in name.split(".")):
        raise ValueError(f"bad host name {host!r}")
    return name


def parseRoute(text):
    """
    C{HOST=URL}: requests whose Host is HOST (a name, C{[IPv6]}, or a glob
    like C{*.example.com}) go to URL.

    @return: (lower-case pattern, L{Backend}).
    @raise ValueError: one line saying what is wrong.
    """
    pattern, sep, url = text.strip().partition("=")
    pattern = pattern.strip()
    if not sep:
        raise ValueError(f"{text!r} is not HOST=URL")
    if pattern.startswith("[") and pattern.endswith("]"):
        return _ipv6(pattern[1:-1]), parseBackend(url)
    if ":" in pattern:
        raise ValueError(f"{pattern!r}: routes match the Host without its port")
    try:
        pattern = _hostName(pattern, _NAME_CHARS | _GLOB_CHARS)
    except ValueError:
        raise ValueError(f"{pattern!r} is not a host name or a glob like *.example.com") from None
    return pattern, parseBackend(url)


class _Health:
    """Consecutive failures (0: up), when the back-off ends, and whether a trial is out."""

    failures = 0
    downUntil = 0.0
    trial = False


class BackendGroup:
    """
    Round robin over backends.  One that fails to connect is left out for
    C{baseBackoff} seconds, doubled for each consecutive failure up to
    C{maxBackoff}; when that expires one request tries it again.  Failures
    reported while it is down and no trial is out are ignored: connects begun
    before it went down, which would make one outage look like many.
    """

    def __init__(self, backends, clock, baseBackoff=1.0, maxBackoff=30.0):
        self.backends = tuple(backends)
        self.clock = clock
        self.baseBackoff = baseBackoff
        self.maxBackoff = maxBackoff
        self._health = {backend: _Health() for backend in self.backends}
        self._next = 0

    def _backoff(self, failures):
        return min(self.baseBackoff * 2.0 ** min(failures - 1, 64), self.maxBackoff)

    def choose(self):
        """The next backend that is up or due a trial; None if all are backing off."""
        now = self.clock.seconds()
        count = len(self.backends)
        for step in range(count):
            index = (self._next + step) % count
            backend = self.backends[index]
            health = self._health[backend]
            if health.failures:
                if now < health.downUntil:
                    continue
                # One trial: the others stay away for another back-off, and
                # a trial that never reports is retried after it.
                health.trial = True
                health.downUntil = now + self._backoff(health.failures)
            self._next = (index + 1) % count
            return backend
        return None

    def failed(self, backend):
        """A connect to C{backend} failed: mark it down, doubling the back-off."""
        health = self._health[backend]
        now = self.clock.seconds()
        if health.failures and not health.trial and now < health.downUntil:
            return
        health.failures += 1
        health.trial = False
        health.downUntil = now + self._backoff(health.failures)

    def succeeded(self, backend):
        """A connect to C{backend} succeeded: it is up, its back-off reset."""
        health = self._health[backend]
        health.failures, health.trial, health.downUntil = 0, False, 0.0

    def isDown(self, backend):
        """Whether C{backend} has failed and not connected since (even if due a trial)."""
        return self._health[backend].failures > 0


def _hostOf(hostHeader):
    """The Host's host as patterns are written (no port, brackets or trailing dot); None if bad."""
    try:
        text = hostHeader.decode("ascii").strip()
        # RFC 3986 lets the port be empty: "host:" is "host".
        return _splitHostPort(text[:-1] if text.endswith(":") else text, 0)[0]
    except ValueError:
        return None


class Router:
    """
    Picks the L{BackendGroup} for a request by its Host: an exact pattern,
    else the first glob that matches, else the default (C{--upstream}).
    """

    def __init__(self, routes, default):
        self.exact = {}
        self.globs = []
        for pattern, group in routes:
            if set(pattern) & _GLOB_CHARS:
                self.globs.append((pattern, group))
            else:
                self.exact.setdefault(pattern, group)
        self.default = default

    def groupFor(self, hostHeader):
        """The group for a request with this Host value (bytes, or None without one)."""
        host = None if hostHeader is None else _hostOf(hostHeader)
        if host is not None:
            if host in self.exact:
                return self.exact[host]
            for pattern, group in self.globs:
                if fnmatch.fnmatchcase(host, pattern):
                    return group
        return self.default


def buildRouter(upstreams, routes, clock, baseBackoff=1.0, maxBackoff=30.0):
    """
    The L{Router} for C{--upstream} backends and C{--route} (pattern,
    L{Backend}) pairs: routes for one pattern share a group, in order.
    """
    byPattern = {}
    for pattern, backend in routes:
        byPattern.setdefault(pattern, []).append(backend)

    def group(backends):
        return BackendGroup(backends, clock, baseBackoff, maxBackoff)

    return Router([(p, group(b)) for p, b in byPattern.items()], group(upstreams) if upstreams else None)
