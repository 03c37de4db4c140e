# -*- test-case-name: tests.unit.test_channel -*-
"""
Fakes for testing proxyd without sockets: a client connection on a
StringTransport that can half-close, and a way to complete the upstream
connections proxyd asks a MemoryReactorClock for.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.factory import ProxyFactory
from proxyd.config import ProxyConfig
from proxyd.policy import AddressPolicy, PortSet


class HalfCloseTransport(StringTransport):
    """A StringTransport that also records C{loseWriteConnection}."""

    writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


def makeConfig(**kwargs):
    """A ProxyConfig for tests: private upstreams allowed, any CONNECT port."""
    kwargs.setdefault("addressPolicy", AddressPolicy(True, False))
    kwargs.setdefault("connectPorts", PortSet.parse("*"))
    return ProxyConfig(**kwargs)


class FakeProxy:
    """
    A L{ProxyFactory} on a MemoryReactorClock, with helpers to open client
    connections and to complete or fail the upstream connections it starts.
    """

    def __init__(self, accessLog=None, **configArgs):
        self.reactor = MemoryReactorClock()
        self.config = makeConfig(**configArgs)
        self.factory = ProxyFactory(self.config, self.reactor, accessLog)
        self._completed = 0

    def client(self, host="127.0.0.1"):
        """A new client connection: (channel, transport)."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 50000))
        transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", host, 50000))
        proto.makeConnection(transport)
        return proto, transport

    def pendingConnects(self):
        """(host, port) of the upstream connections not yet completed."""
        return [(c[0], c[1]) for c in self.reactor.tcpClients[self._completed:]]

    def acceptUpstream(self):
        """Complete the oldest pending upstream connection: (protocol, transport)."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[self._completed]
        self._completed += 1
        address = IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(address)
        transport = HalfCloseTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def refuseUpstream(self, reason):
        """Fail the oldest pending upstream connection with C{reason}."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[self._completed]
        self._completed += 1
        connector = self.reactor.connectors[self._completed - 1]
        factory.clientConnectionFailed(connector, Failure(reason))


def lose(proto, reason=None):
    """Tell C{proto} its connection closed (cleanly unless C{reason})."""
    proto.connectionLost(Failure(reason if reason is not None else ConnectionDone()))
