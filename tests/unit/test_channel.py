"""
The client channel and the exchange behind it, driven with StringTransports
and a fake clock: relaying, pooling, retries, truncation, backpressure,
pipelining, timeouts, CONNECT, policy.
"""

from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from proxyd.policy import ProxyAuth
from proxyd.testing import FakeProxy, lose

GET = b"GET http://127.0.0.1:8000/path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class RelayTests(SynchronousTestCase):
    def setUp(self):
        self.proxy = FakeProxy()
        self.channel, self.client = self.proxy.client()

    def test_getIsRelayedInOriginForm(self):
        """
        An absolute-form GET goes upstream in origin form with Host set from
        the URL, hop-by-hop headers (and those named in Connection) removed,
        repeated headers kept in order, and Via added.
        """
        self.channel.dataReceived(
            b"GET http://127.0.0.1:8000/path?q=1 HTTP/1.1\r\nHost: wrong\r\n"
            b"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nProxy-Connection: keep-alive\r\n"
            b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n"
            b"X-A: 1\r\nX-A: 2\r\n\r\n"
        )
        self.assertEqual(self.proxy.pendingConnects(), [("127.0.0.1", 8000)])
        upstream, upT = self.proxy.acceptUpstream()
        sent = upT.value()
        self.assertTrue(sent.startswith(b"GET /path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"), sent)
        for gone in (b"X-Secret", b"Proxy-Connection", b"Keep-Alive", b"TE:", b"Proxy-Authorization", b"wrong"):
            self.assertNotIn(gone, sent)
        self.assertIn(b"X-A: 1\r\nX-A: 2\r\n", sent)
        self.assertIn(b"Via: 1.1 proxyd\r\n", sent)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello")
        out = self.client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertIn(b"Via: 1.1 proxyd", out)
        self.assertNotIn(b"Keep-Alive", out)
        self.assertTrue(out.endswith(b"\r\n\r\nhello"))
        self.assertFalse(self.client.disconnecting)

    def test_upstreamIsPooled(self):
        """A second request to the same host:port reuses the idle connection."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(OK)
        upT.clear()
        self.channel.dataReceived(GET)
        self.assertEqual(self.proxy.pendingConnects(), [])
        self.assertTrue(upT.value().startswith(b"GET /path?q=1 HTTP/1.1"))

    def test_staleIdempotentRetriedOnce(self):
        """
        A pooled connection that the origin closed before answering is
        retried once on a fresh connection for a GET.
        """
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(OK)
        self.client.clear()
        self.channel.dataReceived(GET)
        lose(upstream)
        self.assertEqual(self.proxy.pendingConnects(), [("127.0.0.1", 8000)])
        fresh, freshT = self.proxy.acceptUpstream()
        self.assertTrue(freshT.value().startswith(b"GET /path"))
        fresh.dataReceived(OK)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 200 OK"))

    def test_postWithBodyNotRetried(self):
        """A POST whose body was sent is never retried: the client gets 502."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(OK)
        self.client.clear()
        self.channel.dataReceived(b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        lose(upstream)
        self.assertEqual(self.proxy.pendingConnects(), [])
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502 "), self.client.value())

    def test_truncatedResponseAbortsClient(self):
        """An upstream that dies mid-body makes proxyd abort the client."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
        lose(upstream, ConnectionLost())
        self.assertTrue(self.client.aborted if hasattr(self.client, "aborted") else self.client.disconnecting)
        self.assertTrue(self.client.disconnecting)

    def test_truncatedChunkedAbortsClient(self):
        """A chunked body that ends without its last chunk is not completed."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        lose(upstream)
        self.assertTrue(self.client.disconnecting)
        self.assertNotIn(b"0\r\n\r\n", self.client.value())

    def test_closeDelimitedRechunked(self):
        """A close-delimited body reaches an HTTP/1.1 client chunked, ended properly."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nabc")
        upstream.dataReceived(b"def")
        lose(upstream)
        out = self.client.value()
        self.assertIn(b"Transfer-Encoding: chunked", out)
        self.assertTrue(out.endswith(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), out)
        self.assertFalse(self.client.disconnecting)

    def test_chunkedRequestBodyStreams(self):
        """A chunked request body goes up chunk by chunk, ended by the last chunk."""
        self.channel.dataReceived(b"POST http://127.0.0.1:8000/u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        upstream, upT = self.proxy.acceptUpstream()
        self.channel.dataReceived(b"5\r\nhello\r\n")
        self.assertTrue(upT.value().endswith(b"\r\n\r\n5\r\nhello\r\n"))
        self.channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(upT.value().endswith(b"0\r\n\r\n"))

    def test_backpressureBothWays(self):
        """
        While a request body streams, the upstream transport's producer
        pauses the client's reading; while a response body streams, the
        upstream transport is the client transport's streaming producer.
        """
        self.channel.dataReceived(b"POST http://127.0.0.1:8000/u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        upstream, upT = self.proxy.acceptUpstream()
        self.assertTrue(upT.streaming)
        upT.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")
        upT.producer.resumeProducing()
        self.assertEqual(self.client.producerState, "producing")
        self.channel.dataReceived(b"67890")
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12")
        self.assertIs(self.client.producer, upT)
        self.assertTrue(self.client.streaming)
        upstream.dataReceived(b"34567890")
        self.assertIsNone(self.client.producer)

    def test_pipelinedInOrder(self):
        """The second pipelined request goes upstream only after the first response."""
        self.channel.dataReceived(GET + GET.replace(b"/path", b"/second"))
        upstream, upT = self.proxy.acceptUpstream()
        self.assertNotIn(b"/second", upT.value())
        upstream.dataReceived(OK)
        self.assertIn(b"GET /second", upT.value())
        upstream.dataReceived(OK)
        self.assertEqual(self.client.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_expectContinueEndToEnd(self):
        """The origin's 100 Continue reaches the client; a refusal arrives before the body."""
        self.channel.dataReceived(b"PUT http://127.0.0.1:8000/u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        upstream, upT = self.proxy.acceptUpstream()
        self.assertIn(b"Expect: 100-continue", upT.value())
        upstream.dataReceived(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
        out = self.client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 417"), out)
        self.assertIn(b"Connection: close", out)

    def test_continueRelayed(self):
        self.channel.dataReceived(b"PUT http://127.0.0.1:8000/u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 100 Continue\r\n"))
        self.channel.dataReceived(b"abc")
        self.assertTrue(upT.value().endswith(b"abc"))
        upstream.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"HTTP/1.1 201 Created", self.client.value())

    def test_headResponseHasNoBody(self):
        """A HEAD response with Content-Length is complete after its head."""
        self.channel.dataReceived(GET.replace(b"GET", b"HEAD"))
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.assertIn(b"Content-Length: 1000", self.client.value())
        self.channel.dataReceived(GET)
        self.assertEqual(self.proxy.pendingConnects(), [])

    def test_refusedIs502(self):
        """A refused upstream is a text/plain 502 naming the address."""
        self.channel.dataReceived(GET)
        self.proxy.refuseUpstream(ConnectionRefusedError())
        out = self.client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), out)
        self.assertIn(b"text/plain", out)
        self.assertIn(b"connection refused by 127.0.0.1:8000", out)

    def test_garbageUpstreamIs502(self):
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"lol\r\n\r\n")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502"))
        self.assertTrue(upT.disconnecting)

    def test_responseTimeoutIs504(self):
        """An upstream that never answers gives 504 after the idle timeout."""
        self.channel.dataReceived(GET)
        self.proxy.acceptUpstream()
        self.proxy.reactor.advance(self.proxy.config.idleTimeout + 1)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 504"), self.client.value())

    def test_clientGoneAbortsUpstream(self):
        """A client that leaves mid-download takes its upstream connection down."""
        self.channel.dataReceived(GET)
        upstream, upT = self.proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
        lose(self.channel, ConnectionLost())
        self.assertTrue(upT.disconnecting)
        self.assertEqual(self.proxy.factory.pool.idle, {})


class ClientSideTests(SynchronousTestCase):
    def test_headerTimeout(self):
        """A client that never finishes its head is closed (slowloris)."""
        proxy = FakeProxy(headerTimeout=5.0)
        channel, client = proxy.client()
        channel.dataReceived(b"GET http://127.0.0.1/ HTTP/1.1\r\nX: ")
        proxy.reactor.advance(4)
        self.assertFalse(client.disconnecting or client.writeClosed)
        proxy.reactor.advance(2)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 408"))
        self.assertTrue(client.disconnecting or client.writeClosed)

    def test_silentClientClosed(self):
        proxy = FakeProxy(headerTimeout=5.0)
        channel, client = proxy.client()
        proxy.reactor.advance(6)
        self.assertTrue(client.disconnecting)
        self.assertEqual(client.value(), b"")

    def test_keepAliveIdleTimeout(self):
        """An idle keep-alive client is closed after the idle timeout, not the head timeout."""
        proxy = FakeProxy(headerTimeout=5.0, idleTimeout=50.0)
        channel, client = proxy.client()
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"ok\n", client.value())
        proxy.reactor.advance(20)
        self.assertFalse(client.disconnecting)
        proxy.reactor.advance(31)
        self.assertTrue(client.disconnecting)

    def test_selfPages(self):
        proxy = FakeProxy()
        channel, client = proxy.client()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        out = client.value()
        self.assertIn(b"proxyd", out)
        self.assertIn(b"forward mode", out)
        self.assertIn(b"HTTP/1.1 404", out)

    def test_badRequestIs400AndClose(self):
        proxy = FakeProxy()
        channel, client = proxy.client()
        channel.dataReceived(b"POST http://127.0.0.1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400"))
        self.assertTrue(client.writeClosed or client.disconnecting)
        self.assertEqual(proxy.pendingConnects(), [])

    def test_headTooLargeIs431(self):
        proxy = FakeProxy(maxHeaderSize=2048)
        channel, client = proxy.client()
        channel.dataReceived(b"GET http://127.0.0.1/ HTTP/1.1\r\nX: " + b"a" * 3000)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 431"))

    def test_clientNotAllowed(self):
        from ipaddress import ip_network

        proxy = FakeProxy(allow=(ip_network("10.0.0.0/8"),))
        channel, client = proxy.client("127.0.0.1")
        channel.dataReceived(GET)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403"))
        self.assertEqual(proxy.pendingConnects(), [])

    def test_proxyAuthRequired(self):
        """Without credentials: 407 with a Basic challenge; with them: relayed."""
        proxy = FakeProxy(proxyAuth=ProxyAuth.fromPair("u:p"))
        channel, client = proxy.client()
        channel.dataReceived(GET)
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 407"), out)
        self.assertIn(b'Proxy-Authenticate: Basic realm="proxyd"', out)
        channel, client = proxy.client()
        channel.dataReceived(GET.replace(b"\r\n\r\n", b"\r\nProxy-Authorization: Basic dTpw\r\n\r\n"))
        upstream, upT = proxy.acceptUpstream()
        self.assertNotIn(b"Proxy-Authorization", upT.value())

    def test_maxConnections(self):
        proxy = FakeProxy(maxConnections=2)
        proxy.client()
        proxy.client()
        channel, client = proxy.client()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503"))
        self.assertTrue(client.disconnecting)


class ConnectTests(SynchronousTestCase):
    def setUp(self):
        self.proxy = FakeProxy()
        self.channel, self.client = self.proxy.client()

    def test_establishedOnlyAfterConnect(self):
        """200 comes only once the upstream is up; early bytes are relayed first."""
        self.channel.dataReceived(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\nEARLY")
        self.assertEqual(self.client.value(), b"")
        self.channel.dataReceived(b"MORE")
        peer, peerT = self.proxy.acceptUpstream()
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 200 Connection established\r\n"))
        self.assertEqual(peerT.value(), b"EARLYMORE")
        self.channel.dataReceived(b"x")
        peer.dataReceived(b"y")
        self.assertEqual(peerT.value(), b"EARLYMOREx")
        self.assertTrue(self.client.value().endswith(b"\r\n\r\ny"))
        self.assertIs(peerT.producer, self.client)
        self.assertIs(self.client.producer, peerT)

    def test_halfClose(self):
        """The client's EOF is passed on; the server's answer still arrives."""
        self.channel.dataReceived(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        peer, peerT = self.proxy.acceptUpstream()
        self.channel.readConnectionLost()
        self.assertTrue(peerT.writeClosed)
        self.assertFalse(self.client.disconnecting)
        peer.dataReceived(b"answer")
        self.assertTrue(self.client.value().endswith(b"answer"))
        peer.readConnectionLost()
        self.assertTrue(self.client.disconnecting or self.client.writeClosed)

    def test_portNotAllowed(self):
        proxy = FakeProxy(connectPorts=__import__("proxyd.policy", fromlist=["PortSet"]).PortSet.parse("443"))
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403"))
        self.assertIn(b"--connect-ports", client.value())
        self.assertEqual(proxy.pendingConnects(), [])

    def test_ipv6Target(self):
        self.channel.dataReceived(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.proxy.pendingConnects(), [("::1", 443)])

    def test_refusedIs502(self):
        self.channel.dataReceived(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.proxy.refuseUpstream(ConnectionRefusedError())
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 502"))

    def test_tunnelIdleTimeout(self):
        self.channel.dataReceived(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        peer, peerT = self.proxy.acceptUpstream()
        idle = self.proxy.config.idleTimeout
        self.proxy.reactor.advance(idle / 2)
        self.channel.dataReceived(b"x")
        self.proxy.reactor.advance(idle * 0.75)
        self.assertFalse(self.client.disconnecting)
        self.proxy.reactor.advance(idle)
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(peerT.disconnecting)


class UpgradeTests(SynchronousTestCase):
    def test_websocketUpgradeBecomesRelay(self):
        """
        An Upgrade request keeps its Upgrade headers upstream; after 101 the
        connection is a two-way byte relay, bytes after the 101 included.
        """
        proxy = FakeProxy()
        channel, client = proxy.client()
        channel.dataReceived(
            b"GET http://127.0.0.1:8000/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
        )
        upstream, upT = proxy.acceptUpstream()
        self.assertIn(b"Upgrade: websocket\r\n", upT.value())
        self.assertIn(b"Connection: upgrade\r\n", upT.value())
        upstream.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME1")
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), out)
        self.assertIn(b"Upgrade: websocket", out)
        self.assertTrue(out.endswith(b"FRAME1"))
        upT.clear()
        channel.dataReceived(b"CLIENTFRAME")
        self.assertEqual(upT.value(), b"CLIENTFRAME")
        upstream.dataReceived(b"FRAME2")
        self.assertTrue(client.value().endswith(b"FRAME2"))

    def test_refusedUpgradeClosesClient(self):
        """A 200 to an Upgrade request is relayed and the client connection then closed."""
        proxy = FakeProxy()
        channel, client = proxy.client()
        channel.dataReceived(b"GET http://127.0.0.1:8000/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(OK)
        self.assertIn(b"Connection: close", client.value())
        self.assertTrue(client.disconnecting)


class PoolPauseTests(SynchronousTestCase):
    def test_pausedUpstreamResumedWhenPooled(self):
        """
        An upstream connection paused by a slow client when its body ends
        goes back to the pool reading again, so the next exchange on it
        gets its response.
        """
        proxy = FakeProxy()
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        client.producer.pauseProducing()
        self.assertEqual(upT.producerState, "paused")
        upstream.dataReceived(b"67890")
        self.assertEqual(upT.producerState, "producing")
        self.assertIs(proxy.factory.pool.take(("127.0.0.1", 8000)).transport, upT)
