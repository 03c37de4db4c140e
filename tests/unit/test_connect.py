"""
Tests for L{proxyd.connect}: resolve, check every address, connect to a
checked address within the timeout.
"""

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from proxyd.connect import UpstreamConnector, formatAddress
from proxyd.errors import ProxyError
from proxyd.policy import AddressPolicy


class FakeResolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        pass


class FakeResolver:
    """
    Resolves names from C{table} (name -> list of IP strings) at once; a
    name missing from the table is left pending in C{pending} until
    L{complete} is called.
    """

    def __init__(self, table=None):
        self.table = table or {}
        self.calls = []
        self.pending = {}

    def resolveHostName(self, receiver, host, port=0, addressTypes=None, transportSemantics="TCP"):
        self.calls.append((host, port))
        resolution = FakeResolution(host)
        receiver.resolutionBegan(resolution)
        if host in self.table:
            self._deliver(receiver, self.table[host], port)
        else:
            self.pending[host] = receiver
        return resolution

    def complete(self, host, addresses, port=0):
        self._deliver(self.pending.pop(host), addresses, port)

    @staticmethod
    def _deliver(receiver, addresses, port):
        for ip in addresses:
            if ":" in ip:
                receiver.addressResolved(IPv6Address("TCP", ip, port))
            else:
                receiver.addressResolved(IPv4Address("TCP", ip, port))
        receiver.resolutionComplete()


PUBLIC4 = "93.184.216.34"
PUBLIC4B = "93.184.216.35"
PUBLIC6 = "2606:2800:220:1:248:1893:25c8:1946"


class ConnectorTestsMixin:
    timeout = 10.0

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver(
            {
                "example.com": [PUBLIC4],
                "two.example": [PUBLIC4, PUBLIC4B],
                "v6.example": [PUBLIC6],
                "rebind.example": [PUBLIC4, "127.0.0.1"],
                "internal.example": ["10.1.2.3"],
                "metadata.example": ["169.254.169.254"],
                "mapped.example": ["::ffff:127.0.0.1"],
                "nowhere.example": [],
            }
        )
        self.reactor.nameResolver = self.resolver
        self.policy = AddressPolicy(allowPrivate=False, allowLinkLocal=False)
        self.connector = UpstreamConnector(self.reactor, self.policy, self.timeout)
        self.factory = Factory.forProtocol(Protocol)

    def connect(self, host, port=443):
        return self.connector.connect(host, port, self.factory)

    def failWith(self, index, exception):
        """Fail the C{index}th connection attempt with C{exception}."""
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(exception))

    def succeed(self, index):
        """Complete the C{index}th connection attempt; return the transport."""
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def proxyError(self, d):
        """The L{ProxyError} C{d} failed with."""
        return self.failureResultOf(d, ProxyError).value


class ResolutionTests(ConnectorTestsMixin, SynchronousTestCase):
    """resolve() and the address checks."""

    def test_ipv4LiteralSkipsDNS(self):
        """An IPv4 literal is connected to directly, with no DNS lookup."""
        self.connect(PUBLIC4, 8443)
        self.assertEqual(self.resolver.calls, [])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [(PUBLIC4, 8443)])

    def test_ipv6LiteralSkipsDNS(self):
        """An IPv6 literal is connected to directly, with no DNS lookup."""
        self.connect(PUBLIC6, 443)
        self.assertEqual(self.resolver.calls, [])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [(PUBLIC6, 443)])

    def test_resolveLiteral(self):
        """resolve() of a literal gives it back, normalised, at once."""
        self.assertEqual(self.successResultOf(self.connector.resolve("2001:DB8::0:1")), ["2001:db8::1"])
        self.assertEqual(self.resolver.calls, [])

    def test_resolveNameDeduplicates(self):
        """resolve() of a name gives its addresses once each, in resolver order."""
        self.resolver.table["dup.example"] = [PUBLIC4B, PUBLIC4, PUBLIC4B]
        self.assertEqual(self.successResultOf(self.connector.resolve("dup.example")), [PUBLIC4B, PUBLIC4])

    def test_deniedLiteral(self):
        """A loopback literal is refused with 403 and the reason, without connecting."""
        err = self.proxyError(self.connect("127.0.0.1", 443))
        self.assertEqual(err.status, 403)
        self.assertIn("127.0.0.1", err.reason)
        self.assertIn("loopback", err.reason)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_nameResolvingToDeniedAddress(self):
        """A name that resolves to a private address: 403 naming both the name and the address."""
        err = self.proxyError(self.connect("internal.example", 443))
        self.assertEqual(err.status, 403)
        self.assertIn("internal.example", err.reason)
        self.assertIn("10.1.2.3", err.reason)
        self.assertIn("private", err.reason)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_anyDeniedAddressDenies(self):
        """If any resolved address is denied the whole name is refused (no picking the public one)."""
        err = self.proxyError(self.connect("rebind.example", 443))
        self.assertEqual(err.status, 403)
        self.assertIn("127.0.0.1", err.reason)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_linkLocalMetadataDenied(self):
        """The cloud metadata address is refused."""
        err = self.proxyError(self.connect("metadata.example", 80))
        self.assertEqual(err.status, 403)
        self.assertIn("169.254.169.254", err.reason)

    def test_ipv4MappedLoopbackDenied(self):
        """An IPv4-mapped IPv6 loopback address is refused like 127.0.0.1."""
        self.assertEqual(self.proxyError(self.connect("mapped.example", 443)).status, 403)
        self.assertEqual(self.proxyError(self.connect("::ffff:127.0.0.1", 443)).status, 403)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_privateAllowedByPolicy(self):
        """With allowPrivate the same name is connected to."""
        connector = UpstreamConnector(self.reactor, AddressPolicy(allowPrivate=True, allowLinkLocal=False), 10)
        connector.connect("internal.example", 80, self.factory)
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("10.1.2.3", 80)])

    def test_noAddresses(self):
        """A name with no addresses gives 502 naming the host."""
        err = self.proxyError(self.connect("nowhere.example", 443))
        self.assertEqual(err.status, 502)
        self.assertIn("nowhere.example", err.reason)
        self.assertIn("resolve", err.reason)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_resolverRaisesDNSLookupError(self):
        """A resolver failing with DNSLookupError gives 502 too."""
        d = self.connect("pending.example", 443)
        self.resolver.pending.pop("pending.example").deferred.errback(error.DNSLookupError("nope"))
        self.assertEqual(self.proxyError(d).status, 502)

    def test_resolutionTimeout(self):
        """A resolution that never completes gives 504 once the connect timeout passes."""
        d = self.connect("pending.example", 443)
        self.assertNoResult(d)
        self.reactor.advance(self.timeout - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        err = self.proxyError(d)
        self.assertEqual(err.status, 504)
        self.assertIn("pending.example", err.reason)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_lateResolutionAfterTimeoutIgnored(self):
        """A resolution completing after the timeout neither raises nor connects."""
        d = self.connect("pending.example", 443)
        self.reactor.advance(self.timeout + 1)
        self.resolver.complete("pending.example", [PUBLIC4])
        self.assertEqual(self.proxyError(d).status, 504)
        self.assertEqual(self.reactor.tcpClients, [])


class ConnectTests(ConnectorTestsMixin, SynchronousTestCase):
    """The TCP connection itself."""

    def test_connectsToCheckedAddress(self):
        """The connection goes to the resolved, checked IP (not the name), with the connect timeout."""
        self.connect("example.com", 443)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[0]
        self.assertEqual((host, port), (PUBLIC4, 443))
        self.assertEqual(timeout, self.timeout)
        self.assertEqual(self.resolver.calls, [("example.com", 0)])

    def test_connectsToIPv6(self):
        """An IPv6 address is connected to as IPv6."""
        self.connect("v6.example", 443)
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[0]
        self.assertEqual((host, port), (PUBLIC6, 443))
        self.assertEqual(self.reactor.connectors[0].getDestination(), IPv6Address("TCP", PUBLIC6, 443))

    def test_timeoutLeftAfterResolution(self):
        """Time spent resolving is taken off the connect timeout."""
        self.connect("pending.example", 443)
        self.reactor.advance(3)
        self.resolver.complete("pending.example", [PUBLIC4])
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[0]
        self.assertEqual(host, PUBLIC4)
        self.assertAlmostEqual(timeout, self.timeout - 3)

    def test_success(self):
        """Once connected the Deferred fires with the factory's protocol, and no timer is left behind."""
        d = self.connect("example.com", 443)
        self.assertNoResult(d)
        transport = self.succeed(0)
        protocol = self.successResultOf(d)
        self.assertIsInstance(protocol, Protocol)
        self.assertIs(protocol.transport, transport)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused(self):
        """Connection refused gives 502 'connection refused' naming host and address."""
        d = self.connect("example.com", 443)
        self.failWith(0, error.ConnectionRefusedError())
        err = self.proxyError(d)
        self.assertEqual(err.status, 502)
        self.assertIn("connection refused", err.reason)
        self.assertIn("example.com:443", err.reason)
        self.assertIn(PUBLIC4, err.reason)

    def test_refusedLiteral(self):
        """Refused on a literal: the reason names the address once."""
        d = self.connect(PUBLIC4, 8080)
        self.failWith(0, error.ConnectionRefusedError())
        err = self.proxyError(d)
        self.assertEqual(err.reason, "connection refused by {}:8080".format(PUBLIC4))

    def test_refusedIPv6Bracketed(self):
        """An IPv6 address in a reason is bracketed before the port."""
        d = self.connect(PUBLIC6, 443)
        self.failWith(0, error.ConnectionRefusedError())
        self.assertIn("[{}]:443".format(PUBLIC6), self.proxyError(d).reason)

    def test_timeout(self):
        """A connect timeout gives 504 saying how long it waited."""
        d = self.connect("example.com", 443)
        self.failWith(0, error.TimeoutError())
        err = self.proxyError(d)
        self.assertEqual(err.status, 504)
        self.assertIn("timed out", err.reason)
        self.assertIn("10s", err.reason)

    def test_noRoute(self):
        """No route to host gives 502 'no route'."""
        d = self.connect("example.com", 443)
        self.failWith(0, error.NoRouteError())
        err = self.proxyError(d)
        self.assertEqual(err.status, 502)
        self.assertIn("no route", err.reason)

    def test_otherError(self):
        """Any other connect error gives 502 with its message."""
        d = self.connect("example.com", 443)
        self.failWith(0, error.ConnectError("network is down"))
        err = self.proxyError(d)
        self.assertEqual(err.status, 502)
        self.assertIn("network is down", err.reason)

    def test_secondAddressAfterRefused(self):
        """When the first address refuses, the second is tried and its success is the result."""
        d = self.connect("two.example", 443)
        self.assertEqual([c[0] for c in self.reactor.tcpClients], [PUBLIC4])
        self.failWith(0, error.ConnectionRefusedError())
        self.assertNoResult(d)
        self.assertEqual([c[0] for c in self.reactor.tcpClients], [PUBLIC4, PUBLIC4B])
        self.succeed(1)
        self.assertIsInstance(self.successResultOf(d), Protocol)

    def test_allAddressesRefused(self):
        """When every address refuses, 502 names the last one tried."""
        d = self.connect("two.example", 443)
        self.failWith(0, error.ConnectionRefusedError())
        self.failWith(1, error.ConnectionRefusedError())
        err = self.proxyError(d)
        self.assertEqual(err.status, 502)
        self.assertIn("connection refused", err.reason)
        self.assertIn(PUBLIC4B, err.reason)

    def test_secondAddressGetsRemainingTime(self):
        """The second attempt only gets the time left of the connect timeout."""
        self.connect("two.example", 443)
        self.reactor.advance(4)
        self.failWith(0, error.ConnectionRefusedError())
        self.assertAlmostEqual(self.reactor.tcpClients[1][3], self.timeout - 4)

    def test_timeoutNotRetried(self):
        """A timeout on the first address uses up the budget: 504, no second attempt."""
        d = self.connect("two.example", 443)
        self.failWith(0, error.TimeoutError())
        self.assertEqual(self.proxyError(d).status, 504)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancelStopsConnecting(self):
        """Cancelling the Deferred (the client went away) stops the attempt and fails the Deferred."""
        d = self.connect("example.com", 443)
        d.cancel()
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.failureResultOf(d)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_cancelTriesNoOtherAddress(self):
        """Cancelling while connecting to a name with several addresses tries no other address."""
        d = self.connect("two.example", 443)
        d.cancel()
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        # Was a bug: a cancelled endpoint attempt fails with
        # ConnectingCancelledError, which is not defer.CancelledError, so
        # _tryAddresses goes on to connect to the second address: the
        # Deferred stays unfired and a connection nobody wants is opened
        # (tunnel/exchange clientLost() cancel exactly like this).
        self.assertEqual([c[0] for c in self.reactor.tcpClients], [PUBLIC4])
        self.failureResultOf(d)

    def test_cancelWhileResolving(self):
        """Cancelling during resolution fails the Deferred and never connects."""
        d = self.connect("pending.example", 443)
        d.cancel()
        self.failureResultOf(d)
        self.resolver.complete("pending.example", [PUBLIC4])
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class FormatAddressTests(SynchronousTestCase):
    """L{formatAddress}."""

    def test_formats(self):
        """IPv4 is host:port; IPv6 is [host]:port."""
        self.assertEqual(formatAddress("192.0.2.1", 80), "192.0.2.1:80")
        self.assertEqual(formatAddress("2001:db8::1", 443), "[2001:db8::1]:443")
