# -*- test-case-name: tests.unit.test_upstream -*-
"""
Upstream HTTP connections and the per-host:port pool of idle ones.

An L{UpstreamProtocol} carries one exchange at a time: the exchange writes
the request, the protocol parses the response and hands the events to the
exchange.  Between exchanges it waits in the L{UpstreamPool}; an idle
connection that the origin closes, or that says anything, is dropped.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from proxyd.connect import formatAddress
from proxyd.h1 import ERROR, ResponseReader
from proxyd.errors import ProxyError
from proxyd.tlsconfig import describeTLSFailure, upstreamCreator


# Bytes read from an upstream socket at a time (Twisted's default is 64 KiB).
READ_SIZE = 256 * 1024


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class UpstreamProtocol(Protocol):
    """
    One connection to an origin.

    @ivar exchange: the exchange using it, or None while idle.
    @ivar reused: whether it served an exchange before this one.
    @ivar responseBytes: bytes received for the current exchange.
    @ivar relay: set once the connection was upgraded (101).
    """

    _log = Logger()

    def __init__(self, pool, key, maxHeadSize):
        self.pool = pool
        self.key = key
        self.reader = ResponseReader(self, maxHeadSize)
        self.exchange = None
        self.reused = False
        self.responseBytes = 0
        self.relay = None
        self.idleSince = None
        self.lastActivity = 0.0
        self.connected = False

    handshakeWaiter = None

    def handshakeCompleted(self):
        """TLS with the upstream is up: the connection is ready for requests."""
        waiter, self.handshakeWaiter = self.handshakeWaiter, None
        if waiter is not None:
            waiter.callback(None)

    def connectionMade(self):
        self.connected = True
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        if hasattr(self.transport, "bufferSize"):
            # Big bodies come from here: fewer, larger reads mean fewer
            # trips through the parser and the client's (TLS) transport.
            self.transport.bufferSize = READ_SIZE
        peer = self.transport.getPeer()
        self.peer = formatAddress(peer.host, peer.port)

    def begin(self, exchange, head, bodyless):
        """Start an exchange: expect its response, then write its head."""
        self.exchange = exchange
        self.responseBytes = 0
        self.idleSince = None
        self.reader.expect(bodyless)
        self.transport.write(head)

    def dataReceived(self, data):
        if self.relay is not None:
            self.relay.fromUpstream(data)
            return
        if self.exchange is None:
            self._log.info("Idle upstream {peer} sent {n} unexpected bytes; closing it", peer=self.peer, n=len(data))
            self.transport.abortConnection()
            return
        self.responseBytes += len(data)
        self.lastActivity = self.pool.clock.seconds()
        self.reader.feed(data)

    def messageEvent(self, kind, value):
        exchange = self.exchange
        if exchange is not None:
            exchange.upstreamEvent(kind, value)
        elif kind == ERROR:
            # The exchange is over but the upstream said more than its
            # response: the connection is out of step; drop it.
            self._log.info("Upstream {peer}: {reason}; closing it", peer=self.peer, reason=value.reason)
            self.pool.lost(self)
            self.transport.abortConnection()

    def readConnectionLost(self):
        if self.relay is not None:
            self.relay.upstreamEOF()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=ConnectionDone()):
        self.connected = False
        self.pool.lost(self)
        waiter, self.handshakeWaiter = self.handshakeWaiter, None
        if waiter is not None:
            tlsName = self.key[3]
            why = describeTLSFailure(reason, self.transport, tlsName)
            if why is None:
                why = "upstream {!r} closed the connection during the TLS handshake".format(tlsName)
            waiter.errback(ProxyError(502, why))  # logged once, by the exchange
            return
        if self.relay is not None:
            self.relay.upstreamLost(reason)
            return
        exchange = self.exchange
        if exchange is None:
            return
        if self.reader.connectionLost():
            # A close-delimited body ended (the END event went out), or the
            # close came between messages.
            if self.exchange is not None:
                self.exchange.upstreamLost(reason, self)
        else:
            exchange.upstreamLost(reason, self)

    def detach(self):
        """The exchange is over; stop routing events to it."""
        self.exchange = None
        self.reused = True


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, pool, key):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):
        return UpstreamProtocol(self.pool, self.key, self.pool.maxHeadSize)


class UpstreamPool:
    """
    Idle upstream connections, keyed by (host, port).

    @ivar idleTimeout: seconds an idle connection is kept.
    @ivar maxIdlePerKey: idle connections kept per key; more are closed.
    """

    _log = Logger()

    def __init__(self, clock, connector, maxHeadSize=65536, idleTimeout=60.0, maxIdlePerKey=256, trustRoot=None, tlsInsecure=False):
        self.clock = clock
        self.connector = connector
        self.maxHeadSize = maxHeadSize
        self.idleTimeout = idleTimeout
        self.maxIdlePerKey = maxIdlePerKey
        self.idle = {}
        self._sweeper = None
        self._creators = {}
        self.trustRoot = trustRoot
        self.tlsInsecure = tlsInsecure

    def take(self, key):
        """An idle connection for C{key}, or None."""
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.connected:
                return conn
        return None

    def connect(self, key):
        """
        Deferred firing with a new L{UpstreamProtocol} for C{key}: C{(host,
        port)} for plain HTTP, C{("https", host, port, tlsName)} for TLS sent
        with SNI C{tlsName} and verified against that name.
        """
        if len(key) == 2:
            host, port = key
            return self.connector.connect(host, port, _UpstreamFactory(self, key))
        scheme, host, port, tlsName = key
        factory = TLSMemoryBIOFactory(self.tlsCreator(tlsName), True, _UpstreamFactory(self, key))
        factory.noisy = False
        d = self.connector.connect(host, port, factory)
        return d.addCallback(self._handshake, tlsName)

    def _handshake(self, tlsProtocol, tlsName):
        """
        Wait for the TLS handshake, as part of connecting: bounded by the
        connect timeout (504), a failure reported with its reason (502).
        """
        conn = tlsProtocol.wrappedProtocol
        timeout = self.connector.connectTimeout
        waiter = conn.handshakeWaiter = Deferred()

        def timedOut(result, t):
            conn.handshakeWaiter = None  # connectionLost must not report it again
            tlsProtocol.abortConnection()
            raise ProxyError(504, "TLS handshake with upstream {!r} not done after {:g}s".format(tlsName, timeout))

        waiter.addTimeout(timeout, self.clock, onTimeoutCancel=timedOut)
        return waiter.addCallback(lambda _: conn)

    def tlsCreator(self, name):
        """The client TLS connection creator for C{name}, made once."""
        creator = self._creators.get(name)
        if creator is None:
            creator = upstreamCreator(name, self.trustRoot, self.tlsInsecure)
            if len(self._creators) >= 1024:
                self._creators.pop(next(iter(self._creators)))
            self._creators[name] = creator
        return creator

    def release(self, conn):
        """Keep C{conn} for a later exchange to the same host:port."""
        conn.detach()
        # The client side may have paused it (a slow reader) just as the
        # body ended: an idle connection must be reading again, or the next
        # exchange on it never sees its response.
        conn.transport.resumeProducing()
        conns = self.idle.setdefault(conn.key, [])
        if len(conns) >= self.maxIdlePerKey:
            conn.transport.loseConnection()
            return
        conn.idleSince = self.clock.seconds()
        conns.append(conn)
        if self._sweeper is None:
            self._sweeper = self.clock.callLater(self.idleTimeout / 2.0, self._sweep)

    def lost(self, conn):
        conns = self.idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.idle[conn.key]

    def _sweep(self):
        self._sweeper = None
        cutoff = self.clock.seconds() - self.idleTimeout
        for key, conns in list(self.idle.items()):
            for conn in [c for c in conns if c.idleSince is not None and c.idleSince <= cutoff]:
                conns.remove(conn)
                conn.transport.loseConnection()
            if not conns:
                del self.idle[key]
        if self.idle:
            self._sweeper = self.clock.callLater(self.idleTimeout / 2.0, self._sweep)

    def retrust(self, trustRoot, tlsInsecure):
        """
        New trust for upstream TLS (a reload): connections verified under
        the old one are not reused, and creators are made afresh.
        """
        if trustRoot is self.trustRoot and tlsInsecure == self.tlsInsecure:
            return
        self.trustRoot = trustRoot
        self.tlsInsecure = tlsInsecure
        self._creators.clear()
        for key in [k for k in self.idle if len(k) == 4]:
            for conn in self.idle.pop(key):
                conn.transport.loseConnection()

    def closeAll(self):
        """Close every idle connection (shutdown)."""
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None
        for conns in list(self.idle.values()):
            for conn in conns:
                conn.transport.loseConnection()
        self.idle.clear()
