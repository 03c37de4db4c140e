# -*- test-case-name: tests.unit.test_reverse -*-
"""
Reverse mode: which backend a request goes to (--route by Host, else
--upstream round robin), what the backend is told about the client
(X-Forwarded-*, Forwarded), and moving on to the next backend when one
refuses the connection.

The exchange itself is the ordinary L{HttpExchange} (or PluginExchange
when plugins are on): streaming, pooling and keep-alive are the forward
proxy's, only the target and a few headers differ.
"""

from twisted.logger import Logger

from proxyd.errors import ProxyError
from proxyd.urls import DEFAULT_PORTS, formatAuthority, parseAbsoluteURL

_log = Logger()


class BackendChoice:
    """
    The backend an exchange is going to, and how to move to another.

    @ivar group: the L{proxyd.backends.BackendGroup} the Host chose.
    @ivar backend: the current L{proxyd.backends.Backend}.
    @ivar target: the request's origin-form target, for the next backend's
        path prefix.
    """

    def __init__(self, group, backend, target):
        self.group = group
        self.backend = backend
        self.target = target
        self.tried = {backend}

    def connected(self):
        self.group.succeeded(self.backend)

    def failed(self, reason):
        """
        The current backend did not take the connection: mark it down and
        pick another not tried yet.

        @return: the next L{proxyd.backends.Backend}, or None.
        """
        self.group.failed(self.backend)
        _log.warn("Backend {url} failed ({reason}); marked down, trying another", url=self.backend.url, reason=reason)
        backend = self.group.choose()
        if backend is None or backend in self.tried:
            return None
        self.tried.add(backend)
        self.backend = backend
        return backend


def reverseExchange(channel, head):
    """
    The exchange for a request to the site proxyd serves.

    @raise ProxyError: a request that cannot go to any backend.
    """
    if head.method == b"CONNECT":
        raise ProxyError(405, "CONNECT is not served here: this is a reverse proxy")
    hostHeader = None
    for name, value in head.headers:
        if name.lower() == b"host":
            hostHeader = value
    target = head.target
    if target[:1] != b"/" and target != b"*":
        # Absolute form (RFC 9112 section 3.2.2): its authority is the Host.
        try:
            _, _, target, hostHeader = parseAbsoluteURL(target.replace(b"https://", b"http://", 1))
        except ProxyError:
            raise ProxyError(400, "the request target must be a path")
    elif hostHeader is None and head.version == b"1.1":
        raise ProxyError(400, "HTTP/1.1 request without Host")
    factory = channel.factory
    group = factory.router.groupFor(hostHeader)
    if group is None:
        raise ProxyError(502, "no backend for host {}".format((hostHeader or b"-").decode("latin-1")))
    backend = group.choose()
    if backend is None:
        raise ProxyError(502, "every backend for this site is down; try again shortly")
    choice = BackendChoice(group, backend, target)
    sendHost = hostHeader if hostHeader is not None else _authority(backend)
    exchange = channel.exchangeClass(
        channel, head, backend.host, backend.port, backend.pathFor(target), sendHost, tlsName=backend.tlsName
    )
    exchange.backends = choice
    exchange.sentHostIsBackend = hostHeader is None
    scheme = factory.scheme
    exchange.forwarding = (channel.client, scheme.decode("ascii"), hostHeader)
    exchange.publicURL = scheme + b"://" + (hostHeader or sendHost) + (target if target != b"*" else b"")
    return exchange


def retarget(exchange, backend):
    """Point C{exchange} at another backend (its connect failed on the last)."""
    exchange.host = backend.host
    exchange.port = backend.port
    exchange.tlsName = backend.tlsName
    exchange.key = backend.key
    exchange.path = backend.pathFor(exchange.backends.target)
    if exchange.sentHostIsBackend:
        exchange.hostHeader = _authority(backend)


def _authority(backend):
    return formatAuthority(backend.host, backend.port, DEFAULT_PORTS[backend.scheme.encode("ascii")])
