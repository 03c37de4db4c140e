# -*- test-case-name: tests.unit.test_mitm -*-
"""
Interception after a CONNECT in mitm mode.

The upstream TCP connection is already up and the client has its 200.  The
client's first bytes decide what happens:

  - a TLS ClientHello: unless the host is passthrough, proxyd terminates
    TLS with a leaf certificate for the SNI (else the CONNECT host) and
    serves the HTTP inside through an inner L{ProxyChannel} bound to that
    origin; the upstream is reached over TLS with the same SNI, verified;
  - plain HTTP: served the same way, without TLS;
  - anything else, or a passthrough host: relayed blind, byte-exact.

The decision to intercept or tunnel is made in one place,
L{connectDecision}, so that plugins' connect policies can join it.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from proxyd.errors import ProxyError
from proxyd.urls import parseAbsoluteURL
from proxyd.relay import Relay
from proxyd.sniff import HTTP, NEED_MORE, TLS, ClientHelloError, ClientHelloReader, classify

from proxyd.interfaces import INTERCEPT, TUNNEL, Deny
from proxyd.message import ConnectTarget
from proxyd.pipeline import PluginError
from proxyd.pluginsettings import matchesHost

# Bytes the client may send before proxyd has decided what it speaks.
SNIFF_LIMIT = 65536



def connectDecision(config, host, sni):
    """
    INTERCEPT or TUNNEL for a CONNECT to C{host} whose client sent C{sni}.
    --passthrough globs are matched on the SNI and on the CONNECT host.
    """
    patterns = config.passthrough
    if patterns and (matchesHost(patterns, host) or (sni and matchesHost(patterns, sni))):
        return TUNNEL
    return INTERCEPT


def innerExchange(channel, head):
    """
    The exchange for a request inside an intercepted CONNECT: origin-form
    (or an absolute URL for the same origin) to the CONNECT target, over
    TLS with the client's SNI when the client spoke TLS.
    """
    tlsName, host, port = channel.origin
    if head.method == b"CONNECT":
        raise ProxyError(400, "CONNECT inside a tunnel is not supported")
    target = head.target
    if target[:1] != b"/" and not (target == b"*" and head.method == b"OPTIONS"):
        try:
            target = parseAbsoluteURL(target.replace(b"https://", b"http://", 1))[2]
        except ProxyError:
            raise ProxyError(400, "request target inside a tunnel must be a path")
    hostHeader = None
    for name, value in head.headers:
        if name.lower() == b"host":
            hostHeader = value
    if hostHeader is None:
        hostHeader = (tlsName or host).encode("idna")
        if port != (443 if tlsName else 80):
            hostHeader += b":%d" % (port,)
    return channel.exchangeClass(channel, head, host, port, target, hostHeader, tlsName=tlsName)


class _One(Factory):
    """A factory that hands out one prepared protocol."""

    noisy = False

    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


class Interception:
    """
    The client side of one intercepted CONNECT: sniffing first, then the
    TLS (or plain) inner channel, or a blind relay.
    """

    _log = Logger()

    def __init__(self, channel, tunnel, peer):
        self.channel = channel
        self.factory = channel.factory
        self.tunnel = tunnel
        self.peer = peer
        self.buffer = b""
        self.hello = None
        self.inner = None  # what receives the client's bytes once decided
        self.innerChannel = None
        self.name = None
        self.waiting = False
        self.finished = False
        self.denied = None
        peer.earlyData = self._serverSpokeFirst

    def _serverSpokeFirst(self, data):
        """
        The upstream talked before the client did (SMTP, FTP, database
        banners): nothing to intercept; tunnel blind from here.
        """
        if self.inner is not None or self.waiting or self.finished:
            return  # already decided; this connection is being dropped
        self._blind("server spoke first")
        self.peer.relay.fromUpstream(data)

    def start(self, pending):
        if pending:
            self.dataReceived(pending)

    def dataReceived(self, data):
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        if self.waiting:
            if len(self.buffer) > SNIFF_LIMIT:
                self.channel.pauseReading("interception")
            return
        if self.hello is None:
            kind = classify(self.buffer)
            if kind == NEED_MORE:
                return
            if kind == TLS:
                self.hello = ClientHelloReader()
                data = self.buffer
            elif kind == HTTP:
                self._serve(None, None)
                return
            else:
                self._blind("not TLS or HTTP")
                return
        try:
            self.hello.feed(data)
        except ClientHelloError as e:
            self._log.info(
                "Bad TLS ClientHello from {client} for {target}: {why}",
                client=self.channel.client,
                target=self.tunnel.target,
                why=str(e),
            )
            self._close()
            return
        hello = self.hello.result
        if hello is None:
            return
        self.name = hello.sni or self.tunnel.host
        self.sni = hello.sni
        self.waiting = True
        if self.tunnel.decision is not None:
            self._decided(self.tunnel.decision)
            return
        target = ConnectTarget(self.tunnel.host, self.tunnel.port, hello.sni, self.channel.client)
        self.factory.connectDecision(target).addCallbacks(self._decided, self._decisionFailed)

    def _decided(self, decision):
        """Intercept (a leaf for the name), tunnel blind, or deny inside TLS."""
        if self.finished:
            return
        if decision == TUNNEL:
            self.waiting = False
            self._blind("passthrough" if self.tunnel.decision is None and self._passthrough() else "policy")
            return
        if isinstance(decision, Deny):
            self.denied = (decision.status, decision.reason)
            self._log.info(
                "{client} CONNECT {target} (SNI {name}): denied by a connect policy; "
                "requests inside get {status}",
                client=self.channel.client,
                target=self.tunnel.target,
                name=self.name,
                status=decision.status,
            )
        self.factory.leaves.leafFor(self.name).addCallbacks(self._gotLeaf, self._leafFailed)

    def _passthrough(self):
        return connectDecision(self.factory.config, self.tunnel.host, self.sni) == TUNNEL

    def _decisionFailed(self, failure):
        if self.finished:
            return None
        if failure.check(PluginError):
            # No status can be sent before TLS is up: serve it inside.
            self.denied = (failure.value.status, failure.value.reason)
            self.factory.leaves.leafFor(self.name).addCallbacks(self._gotLeaf, self._leafFailed)
            return None
        self._log.failure("Connect policy failed for {target}", failure, target=self.tunnel.target)
        self._close()
        return None

    def _blind(self, why):
        """Tunnel byte-exact to the upstream connection already open."""
        self.tunnel.mode = "tunnel ({})".format(why)
        relay = Relay(self.channel.clock, self.channel, self.peer, self.channel.relayDone)
        self.peer.relay = relay
        pending, self.buffer = self.buffer, b""
        self.channel.interception = None
        self.channel.startRelay(relay, self.tunnel, pending)

    def _serve(self, tlsName, leaf):
        """Serve the client's HTTP through an inner channel bound to the origin."""
        from proxyd.channel import ProxyChannel
        from proxyd.deadlines import INTERCEPTED

        channel = self.channel
        self.peer.transport.loseConnection()  # the pool opens its own
        inner = ProxyChannel(self.factory, origin=(tlsName, self.tunnel.host, self.tunnel.port))
        inner.denied = self.denied
        inner.closing = channel.closing  # the daemon began draining meanwhile
        self.innerChannel = inner
        self.tunnel.mode = "intercepted" if tlsName else "plain HTTP"
        if tlsName is None:
            inner.makeConnection(channel.transport)
            self.inner = inner
        else:
            tlsFactory = TLSMemoryBIOFactory(self.factory.serverTLS(leaf), False, _One(inner))
            tlsFactory.noisy = False
            protocol = tlsFactory.buildProtocol(channel.transport.getPeer())
            protocol.makeConnection(channel.transport)
            inner.carrier = channel.transport
            self.inner = protocol
        pending, self.buffer = self.buffer, b""
        channel.resumeReading("interception")
        channel.state = INTERCEPTED  # the inner channel keeps the time now
        self.inner.dataReceived(pending)

    def _gotLeaf(self, leaf):
        if self.finished:
            return
        self.waiting = False
        self._serve(self.name, leaf)

    def _leafFailed(self, failure):
        self._log.failure("Could not make a certificate for {name}", failure, name=self.name)
        self._close()

    def _close(self):
        self.finished = True
        self.peer.transport.loseConnection()
        self.channel.transport.loseConnection()

    def abandon(self):
        """Give up before a decision (the sniff timed out)."""
        self.finished = True
        self.peer.transport.loseConnection()

    def readConnectionLost(self):
        if self.inner is self.innerChannel and self.inner is not None:
            self.inner.readConnectionLost()
        else:
            # EOF under TLS (or before a decision): nothing more can come.
            self._close()

    def connectionLost(self, reason):
        self.finished = True
        if self.inner is None:
            self.peer.transport.loseConnection()
            return
        self.inner.connectionLost(reason)
