"""
What proxyd does after a CONNECT in mitm mode, by what the client sends:
TLS is intercepted (unless passthrough), plain HTTP is served, anything else
is relayed blind.  Fake transports and clock; real ClientHellos from
Python's ssl module.
"""

from twisted.trial.unittest import SynchronousTestCase

from proxyd.ca import CertificateAuthority
from proxyd.mitm import INTERCEPT, TUNNEL, connectDecision, matchesHost
from proxyd.testing import FakeProxy, makeConfig
from tests.unit.tlshello import clientHello

CONNECT = b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n"


class DecisionTests(SynchronousTestCase):
    def test_globs(self):
        """--passthrough globs match case-insensitively, with a trailing dot ignored."""
        self.assertTrue(matchesHost(("*.bank.test",), "WWW.Bank.Test."))
        self.assertFalse(matchesHost(("*.bank.test",), "bank.test.evil"))

    def test_sniOrHost(self):
        """Passthrough is decided on the SNI and on the CONNECT host."""
        config = makeConfig(passthrough=("pinned.test",))
        self.assertEqual(connectDecision(config, "pinned.test", None), TUNNEL)
        self.assertEqual(connectDecision(config, "127.0.0.1", "pinned.test"), TUNNEL)
        self.assertEqual(connectDecision(config, "other.test", "other.test"), INTERCEPT)


class InterceptionTests(SynchronousTestCase):
    def setUp(self):
        self.ca = CertificateAuthority.create(self.mktemp())
        self.resolved = []

    def proxy(self, **kwargs):
        proxy = FakeProxy(mode="mitm", ca=self.ca, **kwargs)
        resolver = proxy.factory.connector

        def resolve(host):
            from twisted.internet.defer import succeed

            return succeed(["127.0.0.1"])

        resolver.resolve = resolve
        return proxy

    def connected(self, proxy):
        channel, client = proxy.client()
        channel.dataReceived(CONNECT)
        peer, peerT = proxy.acceptUpstream()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 Connection established"))
        client.clear()
        return channel, client, peer, peerT

    def test_otherBytesRelayedBlind(self):
        """Bytes that are neither TLS nor HTTP are tunnelled, byte-exact."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.assertEqual(peerT.value(), b"SSH-2.0-OpenSSH_9.6\r\n")
        peer.dataReceived(b"SSH-2.0-server\r\n")
        self.assertEqual(client.value(), b"SSH-2.0-server\r\n")

    def test_passthroughHostIsTunnelledAtOnce(self):
        """
        A CONNECT to a passthrough host is relayed blind from the start:
        the ClientHello's first bytes already reach the origin.
        """
        proxy = self.proxy(passthrough=("example.test",))
        channel, client, peer, peerT = self.connected(proxy)
        hello = clientHello("example.test")
        channel.dataReceived(hello[:10])
        self.assertEqual(peerT.value(), hello[:10])
        channel.dataReceived(hello[10:])
        self.assertEqual(peerT.value(), hello)

    def test_passthroughSNITunnelsTheHello(self):
        """
        A passthrough SNI (the CONNECT was to an address) is seen only in
        the ClientHello, which then goes to the origin untouched.
        """
        proxy = self.proxy(passthrough=("*.pinned.test",))
        channel, client, peer, peerT = self.connected(proxy)
        hello = clientHello("app.pinned.test")
        channel.dataReceived(hello[:10])
        self.assertEqual(peerT.value(), b"")
        channel.dataReceived(hello[10:])
        self.assertEqual(peerT.value(), hello)
        self.assertEqual(proxy.factory.leaves.generated, 0)

    def test_tlsIsIntercepted(self):
        """
        A ClientHello for an intercepted host is answered by proxyd's TLS
        (a ServerHello), the raw upstream connection is dropped, and one
        leaf is made for the SNI.
        """
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(clientHello("www.example.test"))
        self.assertTrue(peerT.disconnecting)
        self.assertEqual(proxy.factory.leaves.generated, 1)
        self.assertTrue(client.value().startswith(b"\x16\x03"), client.value()[:10])

    def test_plainHttpServed(self):
        """Plain HTTP inside the CONNECT goes to the CONNECT target as HTTP."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(b"GET /inside HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertTrue(peerT.disconnecting)
        upstream, upT = proxy.acceptUpstream()
        self.assertTrue(upT.value().startswith(b"GET /inside HTTP/1.1\r\nHost: example.test\r\n"), upT.value())
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))

    def test_drainClosesIdleKeepAliveInside(self):
        """SIGTERM's drain reaches a keep-alive connection idle inside an intercepted tunnel: it closes at once."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(b"GET /inside HTTP/1.1\r\nHost: example.test\r\n\r\n")
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertFalse(client.disconnecting)
        proxy.factory.drain()
        self.assertTrue(client.disconnecting)

    def test_drainLetsTheRequestInsideFinish(self):
        """A request in flight inside the tunnel finishes, then the connection closes."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(b"GET /inside HTTP/1.1\r\nHost: example.test\r\n\r\n")
        upstream, upT = proxy.acceptUpstream()
        proxy.factory.drain()
        self.assertFalse(client.disconnecting)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"Connection: close", client.value())
        self.assertTrue(client.disconnecting)

    def test_garbageHelloClosed(self):
        """A malformed ClientHello ends the connection cleanly."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        self.assertTrue(client.disconnecting)
        self.assertTrue(peerT.disconnecting)

    def test_silentClientTimesOut(self):
        """A client that sends nothing after the 200 is closed after --header-timeout."""
        proxy = self.proxy(headerTimeout=5.0)
        channel, client, peer, peerT = self.connected(proxy)
        proxy.reactor.advance(6)
        self.assertTrue(client.disconnecting)
        self.assertTrue(peerT.disconnecting)

    def test_serverSpeaksFirst(self):
        """A server banner before any client byte makes the CONNECT a blind tunnel."""
        proxy = self.proxy()
        channel, client, peer, peerT = self.connected(proxy)
        peer.dataReceived(b"220 smtp.example.test ESMTP\r\n")
        self.assertEqual(client.value(), b"220 smtp.example.test ESMTP\r\n")
        channel.dataReceived(b"EHLO me\r\n")
        self.assertEqual(peerT.value(), b"EHLO me\r\n")

    def test_stalledHandshakeAborted(self):
        """A client that sends its hello and then nothing is cut off after --header-timeout."""
        proxy = self.proxy(headerTimeout=5.0)
        channel, client, peer, peerT = self.connected(proxy)
        channel.dataReceived(clientHello("www.example.test"))
        self.assertFalse(client.disconnecting)
        proxy.reactor.advance(6)
        self.assertTrue(client.disconnecting)
