# -*- test-case-name: tests.unit.test_tunnel -*-
"""
CONNECT: check the target against policy, open the upstream TCP connection,
answer 200 only once it is up, then hand both connections to a L{Relay}.
Bytes the client sent after the CONNECT head, before reading the 200, are
kept and relayed first.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from proxyd.connect import formatAddress
from proxyd.errors import ProxyError
from proxyd.interfaces import TUNNEL, Deny
from proxyd.message import ConnectTarget
from proxyd.pipeline import PluginError
from proxyd.relay import Relay, RelayPeer

class _PeerFactory(Factory):
    noisy = False
    protocol = RelayPeer


_peerFactory = _PeerFactory()

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 proxyd\r\n\r\n"


class Tunnel:
    """
    One CONNECT request, from its head to the end of the relay.

    @ivar status: 200 once established, else the error status.
    """

    _log = Logger()

    def __init__(self, channel, host, port):
        self.channel = channel
        self.host = host
        self.port = port
        self.connecting = None
        self.relay = None
        self.status = None
        self.done = False
        self.mode = "tunnel"
        self.decision = None  # a connect policy's answer, if one had an opinion

    @property
    def target(self):
        return formatAddress(self.host, self.port)

    def start(self):
        channel = self.channel
        if self.port not in channel.config.connectPorts:
            raise ProxyError(403, "CONNECT to port {} is not allowed (--connect-ports)".format(self.port))
        factory = channel.factory
        if not (factory.pipeline.connectStages or channel.config.passthrough):
            self._connect()
            return
        target = ConnectTarget(self.host, self.port, None, channel.client)
        factory.connectDecision(target).addCallbacks(self._decided, self._policyFailed)

    def _decided(self, decision):
        if self.done:
            return
        self.decision = decision
        if isinstance(decision, Deny):
            self._log.info(
                "{client} CONNECT {target}: denied by a connect policy ({status} {reason})",
                client=self.channel.client,
                target=self.target,
                status=decision.status,
                reason=decision.reason,
            )
            self.status = decision.status
            self.channel.sendError(decision.status, decision.reason, self)
            return
        self._connect()

    def _policyFailed(self, failure):
        if self.done:
            return None
        if failure.check(PluginError):
            self.status = failure.value.status
            self.channel.sendError(failure.value.status, failure.value.reason, self)
            return None
        return failure

    def _connect(self):
        self.connecting = self.channel.connector.connect(self.host, self.port, _peerFactory)
        self.connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, peer):
        self.connecting = None
        if self.done:
            peer.transport.loseConnection()
            return
        self.status = 200
        channel = self.channel
        channel.factory.metrics.tunnelOpened()
        channel.tunnelOpen = True  # counted closed when the client connection ends
        addr = peer.transport.getPeer()
        channel.upstreamAddress = formatAddress(addr.host, addr.port)
        channel.transport.write(ESTABLISHED)
        if channel.config.mode == "mitm" and self.decision != TUNNEL:
            channel.startInterception(self, peer)
            return
        self.relay = Relay(channel.clock, channel, peer, channel.relayDone)
        peer.relay = self.relay
        channel.startRelay(self.relay, self)

    def _failed(self, failure):
        self.connecting = None
        if self.done:
            return
        self.done = True
        if failure.check(ProxyError):
            self._log.info(
                "{client} CONNECT {target}: {status} {reason}",
                client=self.channel.client,
                target=self.target,
                status=failure.value.status,
                reason=failure.value.reason,
            )
            self.status = failure.value.status
            self.channel.sendError(failure.value.status, failure.value.reason, self)
        else:
            self._log.failure("CONNECT to {target} failed", failure, target=self.target)
            self.status = 502
            self.channel.sendError(502, "cannot connect to {}".format(self.target), self)

    def clientLost(self):
        if self.done:
            return
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
