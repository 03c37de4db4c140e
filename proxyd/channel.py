# -*- test-case-name: tests.unit.test_channel -*-
"""
ProxyChannel: one client connection.  It reads requests (pipelined ones wait
their turn), applies the client-side policy (address allow-list, proxy
authentication), and hands each request to an L{HttpExchange}, a L{Tunnel}
or proxyd's own pages.  Its timers (the head timeout against slowloris, the
keep-alive idle timeout, the idle timeout of an exchange or tunnel in
flight) are L{proxyd.deadlines}.
"""

from functools import partial

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from proxyd import h1
from proxyd.errors import ProxyError, errorResponse
from proxyd.tlsconfig import sslReason
from proxyd.exchange import HttpExchange, _Pauser
from proxyd.mitm import Interception, innerExchange
from proxyd.accesslog import accessRecord, describeTarget, outcome
from proxyd.deadlines import BUSY, CLOSING, HEAD, IDLE, SNIFF, TUNNEL, Deadlines
from proxyd.reverse import reverseExchange
from proxyd.selfpages import respond
from proxyd.relay import IHalfCloseableTransport
from proxyd.tunnel import Tunnel
from proxyd.urls import parseAbsoluteURL, parseConnectTarget

# Reading from the client stops while this many request bytes wait in the
# reader's queue (pipelined requests, or a body waiting for its upstream).
QUEUE_LIMIT = 65536

# After an error response, unread request bytes are drained this long before
# the close, so the client reads the response instead of a reset.
LINGER = 2.0


def _exchangeClass(pipeline):
    """Plain exchanges unless a plugin is loaded."""
    if pipeline.active:
        from proxyd.rewriting import PluginExchange

        return PluginExchange
    return HttpExchange


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ProxyChannel(Deadlines, Protocol):
    """
    One client connection to the proxy, or (with C{origin}) the HTTP inside
    an intercepted CONNECT, whose requests all go to that origin.

    @param origin: C{(tlsName, host, port)} for an inner channel: origin-form
        requests go to C{host:port}, over TLS with SNI C{tlsName} unless it
        is None.
    """

    _log = Logger()

    def __init__(self, factory, origin=None):
        self.origin = origin
        self.denied = None  # (status, reason) for every request inside a denied tunnel
        self.interception = None
        self.tlsEstablished = False
        self.overTLS = False  # the client speaks TLS to this channel
        self.tunnelOpen = False
        self.peerSettled = True
        self.carrier = None  # inside intercepted TLS: the client's TCP connection under it
        self.factory = factory
        self.config = factory.config
        self.clock = factory.clock
        self.pool = factory.pool
        self.connector = factory.connector
        self.bodyProducer = _Pauser(partial(self.pauseReading, "upstream"), partial(self.resumeReading, "upstream"))
        self.exchangeClass = _exchangeClass(factory.pipeline)
        self.reader = h1.RequestReader(self, self.config.maxHeaderSize)
        self.exchange = None  # HttpExchange or Tunnel in flight
        self.relay = None
        self.state = HEAD
        self.closing = False
        self.clientEOF = False
        self.upstreamAddress = None
        self.requestHead = None
        self.startTime = 0.0
        self.lastActivity = 0.0
        self.deadline = 0.0
        self._timer = None
        self._pauses = set()
        self._headBytes = 0

    # Connection

    def connectionMade(self):
        if self.origin is None:
            self.factory.connectionOpened(self)
            noDelay = getattr(self.transport, "setTcpNoDelay", None)
            if noDelay is not None:
                noDelay(True)
            self._learnPeer()
            # Behind a haproxy: listener the PROXY header, which names the
            # real client, has not arrived yet: look again at the first head.
            self.peerSettled = False
            self.overTLS = self.factory.listenerTLS is not None
        else:
            self.client = getattr(self.transport.getPeer(), "host", None) or "unix"
            self.allowed = True  # the CONNECT was already admitted
            self.peerSettled = True
            self.overTLS = self.origin[0] is not None
        now = self.clock.seconds()
        self.lastActivity = now
        self._setDeadline(HEAD, now + self.config.headerTimeout)

    def _reconfigured(self):
        """
        A SIGHUP reload landed since the last request: this one and the
        next run under the new settings (policy, plugins, limits).
        """
        factory = self.factory
        self.config = factory.config
        self.exchangeClass = _exchangeClass(factory.pipeline)
        self.reader.maxHeadSize = self.config.maxHeaderSize
        if self.origin is None and self.peerSettled:
            self._learnPeer()

    def _learnPeer(self):
        peer = self.transport.getPeer()
        self.client = getattr(peer, "host", None) or "unix"
        self.allowed = self.factory.clientPolicy.allows(self.client) if hasattr(peer, "host") else True

    def handshakeCompleted(self):
        """TLS with the client is up (a TLS listener, or an intercepted CONNECT)."""
        self.tlsEstablished = True

    def dataReceived(self, data):
        if self.interception is not None:
            self.interception.dataReceived(data)
            return
        if self.relay is not None:
            self.relay.fromClient(data)
            return
        now = self.clock.seconds()
        self.lastActivity = now
        if self.state == IDLE:
            self._setDeadline(HEAD, now + self.config.headerTimeout)
        elif self.state == CLOSING:
            return  # lingering close: discard
        reader = self.reader
        reader.feed(data)
        if reader.queuedBytes > QUEUE_LIMIT:
            self.pauseReading("queue")

    def readConnectionLost(self):
        """The client shut its write half (or closed)."""
        self.clientEOF = True
        if self.interception is not None:
            self.interception.readConnectionLost()
            return
        if self.relay is not None:
            self.relay.clientEOF()
            return
        exchange = self.exchange
        if exchange is None or self.state == CLOSING:
            self.transport.loseConnection()
        elif isinstance(exchange, HttpExchange) and not exchange.requestDone and self.reader.events == []:
            self._log.info("Client {client} closed mid-request", client=self.client)
            exchange.fail(400, "request body truncated by the client")
        # Otherwise the response is still coming: send it, then close.

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=ConnectionDone()):
        if self.origin is None:
            self.factory.connectionClosed(self)
        if self.tunnelOpen:
            self.tunnelOpen = False
            self.factory.metrics.tunnelClosed()
        if self.overTLS and not self.tlsEstablished:
            self.factory.metrics.handshakeFailed("client", reason.value)
            if self.origin is None:
                self._log.info("TLS handshake with client {client} failed: {why}", client=self.client, why=sslReason(reason.value))
            else:
                self._log.info(
                    "TLS with client {client} for {name} failed (does it trust proxyd's CA?): {why}",
                    client=self.client,
                    name=self.origin[0],
                    why=sslReason(reason.value),
                )
        self.state = CLOSING
        if self.interception is not None:
            interception, self.interception = self.interception, None
            interception.connectionLost(reason)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.relay is not None:
            self.relay.clientLost(reason)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            if not exchange.done:
                self._log.info(
                    "Client {client} went away during {target}: {why}",
                    client=self.client,
                    target=self._targetOf(exchange),
                    why=reason.getErrorMessage(),
                )
            exchange.clientLost()
            self._logAccess(exchange)

    def drain(self):
        """
        The daemon is stopping: close now if nothing is in flight, else
        once the exchange or tunnel in flight is over.
        """
        self.closing = True
        interception = self.interception
        if interception is not None and interception.innerChannel is not None:
            # The HTTP is inside the intercepted TLS: its channel decides
            # (and an idle keep-alive there must not hold shutdown up).
            interception.innerChannel.drain()
            return
        idle = self.state == IDLE or (self.state == HEAD and not self.reader.headBytes and not self.reader.events)
        if idle and self.exchange is None and self.relay is None and self.interception is None:
            self._close()

    # Reading control

    def pauseReading(self, why):
        """Stop reading from the client for reason C{why} (reasons stack)."""
        if not self._pauses:
            self.transport.pauseProducing()
        self._pauses.add(why)

    def resumeReading(self, why):
        if why in self._pauses:
            self._pauses.discard(why)
            if not self._pauses and self.state != CLOSING:
                self.transport.resumeProducing()

    def holdRequest(self):
        """Queue the rest of this request until an upstream is ready."""
        self.reader.pause()

    def releaseRequest(self):
        """Let the queued request body flow to the exchange."""
        self.reader.resume()
        if self.reader.queuedBytes <= QUEUE_LIMIT:
            self.resumeReading("queue")

    # Requests

    def messageEvent(self, kind, value):
        if kind == h1.BODY:
            exchange = self.exchange
            if exchange is not None and not exchange.done:
                exchange.requestBody(value)
        elif kind == h1.HEAD:
            self._requestHead(value)
        elif kind == h1.END:
            exchange = self.exchange
            if exchange is not None:
                self.reader.pause()  # the next pipelined request waits its turn
                if isinstance(exchange, HttpExchange):
                    exchange.requestEnd()
        elif kind == h1.ERROR:
            self._badRequest(value)
        # UPGRADE and RAW stay queued for startRelay, or are dropped.

    def _requestHead(self, head):
        now = self.clock.seconds()
        self.requestHead = head
        self.startTime = now
        self.upstreamAddress = None
        self._setDeadline(BUSY, now + self.config.idleTimeout)
        self.holdRequest()
        if self.config is not self.factory.config:
            self._reconfigured()
        if not self.peerSettled:
            self.peerSettled = True
            self._learnPeer()
        try:
            if not self.allowed:
                self._log.info("Refused client {client}: not in --allow", client=self.client)
                raise ProxyError(403, "client address {} is not allowed to use this proxy".format(self.client))
            if self.denied is not None:
                raise ProxyError(*self.denied)
            if self.origin is not None:
                work = innerExchange(self, head)
            elif self.factory.router is not None:
                work = reverseExchange(self, head)
            elif head.method == b"CONNECT":
                host, port = parseConnectTarget(head.target)
                work = Tunnel(self, host, port)
            elif head.target[:1] == b"/" or head.target == b"*":
                self._servePage(head)
                return
            else:
                host, port, path, hostHeader = parseAbsoluteURL(head.target)
                work = self.exchangeClass(self, head, host, port, path, hostHeader)
        except ProxyError as e:
            self.sendError(e.status, e.reason, None)
            return
        self.exchange = work
        auth = self.config.proxyAuth
        if auth is None or self.origin is not None:
            self._begin(work)
            return
        credentials = None
        for name, value in head.headers:
            if name.lower() == b"proxy-authorization":
                credentials = value
        auth.verify(credentials).addCallbacks(self._authorized, self._authFailed, (work,), None, (work,))

    def _authorized(self, ok, work):
        if work.done or self.exchange is not work:
            return
        if not ok:
            self._log.info("Proxy authentication failed for {client}", client=self.client)
            self.sendError(
                407,
                "proxy authentication required",
                work,
                ((b"Proxy-Authenticate", self.config.proxyAuth.challenge),),
            )
            return
        self._begin(work)

    def _authFailed(self, failure, work):
        self._log.failure("Checking proxy credentials failed", failure)
        self.sendError(500, "could not check proxy credentials", work)

    def _begin(self, work):
        try:
            work.start()
        except ProxyError as e:
            work.done = True
            work.status = e.status
            self.sendError(e.status, e.reason, work)

    def _servePage(self, head):
        keepAlive = head.keepAlive and head.framing == h1.NO_BODY
        leaves = self.factory.leaves
        status, data, bodyLength = respond(
            head.target, self.config.mode, keepAlive, leaves.ca.certPEM if leaves is not None else None
        )
        self.transport.write(data)
        self._logAccess(None, status=status, bytesOut=bodyLength)
        if keepAlive:
            self._idle()
        else:
            self._close()

    def _badRequest(self, error):
        self._log.info("Bad request from {client}: {reason}", client=self.client, reason=error.reason)
        exchange = self.exchange
        if exchange is not None and not exchange.done:
            if isinstance(exchange, HttpExchange):
                exchange.fail(error.status, error.reason)
            return
        self.sendError(error.status, error.reason, None)

    # Responses and endings

    def sendError(self, status, reason, work, extraHeaders=()):
        """Answer with proxyd's own error and close the connection."""
        if self.state == CLOSING:
            return
        if work is not None:
            work.done = True
            work.status = status
        data = errorResponse(status, reason, True, extraHeaders)
        self.transport.write(data)
        if work is not None:
            work.bytesOut = getattr(work, "bytesOut", 0) + len(data)
            self._logAccess(work)
        else:
            self._logAccess(None, status=status, bytesOut=len(data))
        self.exchange = None
        self._lingeringClose()

    def exchangeDone(self, exchange, closeClient):
        """An exchange ended cleanly; take the next request or close."""
        self.resumeReading("upstream")
        self._logAccess(exchange)
        self.exchange = None
        if closeClient or self.closing:
            if not exchange.requestDone:
                # Answered before the body was read (a plugin's response):
                # drain a little so the client reads it instead of a reset.
                self._lingeringClose()
            else:
                self._close()
        else:
            self._idle()

    def abortExchange(self, exchange):
        """The response cannot be completed: never pretend it was."""
        self._logAccess(exchange)
        self.exchange = None
        self.state = CLOSING
        self.transport.abortConnection()

    def _idle(self):
        now = self.clock.seconds()
        self._setDeadline(IDLE, now + self.config.idleTimeout)
        self.reader.resume()
        if self.reader.queuedBytes <= QUEUE_LIMIT:
            self.resumeReading("queue")
        if self.clientEOF and self.exchange is None and self.state == IDLE:
            # The client half-closed and every request it sent is answered.
            self._close()

    def _close(self):
        self.state = CLOSING
        self._loseConnection()

    def _loseConnection(self):
        self.transport.loseConnection()
        if self.carrier is not None:
            # Inside intercepted TLS our close_notify is now queued; the
            # client's need not be awaited (RFC 8446 6.1), and an idle
            # client would never send it: the TCP connection closes too.
            self.carrier.loseConnection()

    def _lingeringClose(self):
        self.state = CLOSING
        self._pauses.clear()
        if self.clientEOF or self.origin is not None or not IHalfCloseableTransport(self.transport):
            self._loseConnection()
            return
        self.transport.resumeProducing()
        self.transport.loseWriteConnection()
        self._setDeadline(CLOSING, self.clock.seconds() + LINGER)

    # Relay (CONNECT tunnels and upgrades)

    def _takeHeldBytes(self):
        """The bytes the reader holds after a CONNECT or Upgrade head."""
        pending = [value for kind, value in self.reader.events if kind in (h1.UPGRADE, h1.RAW)]
        self.reader.events = []
        self.reader.queuedBytes = 0
        return b"".join(pending)

    def startRelay(self, relay, work, pending=None):
        """Switch this connection to a byte relay, with what the reader held."""
        self.relay = relay
        self.exchange = work
        self._setDeadline(TUNNEL, self.clock.seconds() + self.config.idleTimeout)
        if pending is None:
            pending = self._takeHeldBytes()
        if self._pauses:
            self._pauses.clear()
            self.transport.resumeProducing()
        relay.start(pending)

    def startInterception(self, tunnel, peer):
        """mitm mode, after the 200: look at what the client sends."""
        self.exchange = tunnel
        tunnel.done = True
        self._logAccess(tunnel)
        self.exchange = None
        self.interception = Interception(self, tunnel, peer)
        self._setDeadline(SNIFF, self.clock.seconds() + self.config.headerTimeout)
        self.interception.start(self._takeHeldBytes())

    def relayDone(self, relay):
        work = self.exchange
        if work is not None:
            work.bytesIn = getattr(work, "bytesIn", 0) + relay.bytesUp
            work.bytesOut = getattr(work, "bytesOut", 0) + relay.bytesDown
            work.done = True
            self._logAccess(work)
            self.exchange = None
        self.state = CLOSING

    # Access log

    def _targetOf(self, work):
        return describeTarget(work, self.requestHead, self.origin)

    def _logAccess(self, work, status=None, bytesOut=0):
        """The end of a request or tunnel: counted, and written to the access log."""
        if work is not None:
            if getattr(work, "logged", False):
                return
            work.logged = True
        factory = self.factory
        metrics = factory.metrics
        if metrics.enabled:
            head = self.requestHead
            metrics.requestDone(
                self.config.mode, head.method if head is not None else b"-", *outcome(self, work, status, bytesOut)
            )
        log = factory.accessLog
        if log is not None:
            log.write(accessRecord(self, work, status, bytesOut))
