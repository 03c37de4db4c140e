# -*- test-case-name: tests.unit.test_relay -*-
"""
A byte-exact two-way relay between the client's connection and an
upstream's: CONNECT tunnels and upgraded (101) connections.

Each transport is registered as the streaming producer of the other, so a
slow reader slows the sender instead of filling memory.  Half-close is kept:
when one side shuts its write half, the other side's write half is shut too,
and the relay ends when both directions are done.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer


class Relay:
    """
    Joins two protocols' transports.  The two protocols call C{fromClient},
    C{fromUpstream}, C{clientEOF}, C{upstreamEOF}, C{clientLost} and
    C{upstreamLost}; C{onDone(relay)} is called once, when the relay ends.

    @ivar lastActivity: when bytes last moved, for the owner's idle timer.
    """

    _log = Logger()

    def __init__(self, clock, client, upstream, onDone):
        self.clock = clock
        self.client = client
        self.upstream = upstream
        self.onDone = onDone
        self.bytesUp = 0
        self.bytesDown = 0
        self.clientDone = False
        self.upstreamDone = False
        self.finished = False
        self.lastActivity = clock.seconds()

    def start(self, pending=b""):
        """Wire producers both ways and send what the client sent early."""
        clientT = self.client.transport
        upstreamT = self.upstream.transport
        upstreamT.registerProducer(clientT, True)
        clientT.registerProducer(upstreamT, True)
        if pending:
            self.fromClient(pending)
        clientT.resumeProducing()

    def fromClient(self, data):
        self.bytesUp += len(data)
        self.lastActivity = self.clock.seconds()
        self.upstream.transport.write(data)

    def fromUpstream(self, data):
        self.bytesDown += len(data)
        self.lastActivity = self.clock.seconds()
        self.client.transport.write(data)

    def clientEOF(self):
        """The client shut its write half: pass the EOF on."""
        self.clientDone = True
        self._shutWrite(self.upstream.transport)
        self._maybeFinish()

    def upstreamEOF(self):
        self.upstreamDone = True
        self._shutWrite(self.client.transport)
        self._maybeFinish()

    def _shutWrite(self, transport):
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        if IHalfCloseableTransport(transport):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()

    def _maybeFinish(self):
        if self.clientDone and self.upstreamDone:
            self._finish()
            self.client.transport.loseConnection()
            self.upstream.transport.loseConnection()

    def clientLost(self, reason):
        """The client's connection is gone; close (or abort) the upstream's."""
        if self.finished:
            return
        self._finish()
        self._closeOther(self.upstream.transport, reason)

    def upstreamLost(self, reason):
        if self.finished:
            return
        self._finish()
        self._closeOther(self.client.transport, reason)

    def _closeOther(self, transport, reason):
        """
        Close the other side after what was already relayed is sent.  A
        byte relay has no framing to protect, and TLS peers often close
        without close_notify (reported as an error): aborting would throw
        away their last bytes, such as a WebSocket close frame.
        """
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        if not reason.check(ConnectionDone):
            self._log.info("Relay peer closed: {why}", why=reason.getErrorMessage())
        transport.loseConnection()

    def abort(self):
        """End the relay now (idle timeout, shutdown)."""
        if self.finished:
            return
        self._finish()
        self.client.transport.abortConnection()
        self.upstream.transport.abortConnection()

    def _finish(self):
        self.finished = True
        for transport in (self.client.transport, self.upstream.transport):
            try:
                transport.unregisterProducer()
            except Exception:
                pass
        self.onDone(self)


def IHalfCloseableTransport(transport):
    """
    Whether C{transport} can shut only its write half.  A TLS wrapper
    cannot (its attribute lookup would reach the TCP socket beneath).
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        return False
    return getattr(transport, "loseWriteConnection", None) is not None


@implementer(IHalfCloseableProtocol)
class RelayPeer(Protocol):
    """The upstream end of a tunnel: hands everything to its L{Relay}."""

    relay = None
    earlyData = None  # called with bytes that arrive before the relay starts

    def dataReceived(self, data):
        if self.relay is not None:
            self.relay.fromUpstream(data)
        elif self.earlyData is not None:
            self.earlyData(data)
        else:
            self.transport.loseConnection()

    def readConnectionLost(self):
        if self.relay is not None:
            self.relay.upstreamEOF()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=ConnectionDone()):
        if self.relay is not None:
            self.relay.upstreamLost(reason)
