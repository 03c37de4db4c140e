"""
Reverse mode through a FakeProxy: the Host picks the backend group,
round robin, fail-over to the next backend when one refuses, the
forwarding headers, and the requests that cannot go anywhere.
"""

from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from proxyd.backends import parseBackend, parseRoute
from proxyd.testing import FakeProxy


def reverseProxy(upstreams, routes=(), **kwargs):
    return FakeProxy(
        mode="reverse",
        upstreams=tuple(parseBackend(u) for u in upstreams),
        routes=tuple(parseRoute(r) for r in routes),
        **kwargs,
    )


def request(channel, path=b"/a?b=1", host=b"site.example", extra=b""):
    channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RoutingTests(SynchronousTestCase):
    def test_roundRobinAndKeepAlive(self):
        """Requests alternate between backends; each backend's connection is pooled and reused."""
        proxy = reverseProxy(["http://10.0.0.1:8000", "http://10.0.0.2:8000/app"])
        channel, client = proxy.client()
        request(channel)
        self.assertEqual(proxy.pendingConnects(), [("10.0.0.1", 8000)])
        up1, up1T = proxy.acceptUpstream()
        self.assertTrue(up1T.value().startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: site.example\r\n"), up1T.value())
        up1.dataReceived(OK)
        request(channel)
        self.assertEqual(proxy.pendingConnects(), [("10.0.0.2", 8000)])
        up2, up2T = proxy.acceptUpstream()
        self.assertTrue(up2T.value().startswith(b"GET /app/a?b=1 HTTP/1.1\r\n"), up2T.value())
        up2.dataReceived(OK)
        up1T.clear()
        request(channel)
        self.assertEqual(proxy.pendingConnects(), [], "the first backend's pooled connection is reused")
        self.assertTrue(up1T.value().startswith(b"GET /a?b=1 HTTP/1.1\r\n"))

    def test_forwardingHeadersReplaced(self):
        """Client-sent X-Forwarded-*/Forwarded are dropped; proxyd's own say who asked, over what."""
        proxy = reverseProxy(["http://10.0.0.1:8000"])
        channel, client = proxy.client()
        request(channel, extra=b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n")
        up, upT = proxy.acceptUpstream()
        sent = upT.value()
        self.assertNotIn(b"6.6.6.6", sent)
        self.assertIn(b"\r\nX-Forwarded-For: 127.0.0.1\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-Proto: http\r\n", sent)
        self.assertIn(b"\r\nX-Forwarded-Host: site.example\r\n", sent)
        self.assertIn(b"\r\nForwarded: for=127.0.0.1;proto=http;host=site.example\r\n", sent)

    def test_routeByHost(self):
        proxy = reverseProxy(["http://10.0.0.1:8000"], routes=["*.api.example=http://10.0.0.9:9000"])
        channel, client = proxy.client()
        request(channel, host=b"v1.api.example:8443")
        self.assertEqual(proxy.pendingConnects(), [("10.0.0.9", 9000)])

    def test_failOver(self):
        """A refusing backend is marked down and the request goes to the next one."""
        proxy = reverseProxy(["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
        channel, client = proxy.client()
        request(channel)
        proxy.refuseUpstream(ConnectionRefusedError())
        self.assertEqual(proxy.pendingConnects(), [("10.0.0.2", 8000)])
        up, upT = proxy.acceptUpstream()
        up.dataReceived(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))
        # While backing off, the dead backend is skipped.
        request(channel)
        self.assertEqual(proxy.pendingConnects(), [])
        self.assertEqual(proxy.factory.router.groupFor(b"site.example").isDown(parseBackend("http://10.0.0.1:8000")), True)

    def test_allDown(self):
        proxy = reverseProxy(["http://10.0.0.1:8000", "http://10.0.0.2:8000"])
        channel, client = proxy.client()
        request(channel)
        proxy.refuseUpstream(ConnectionRefusedError())
        proxy.refuseUpstream(ConnectionRefusedError())
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "), client.value())
        channel2, client2 = proxy.client()
        request(channel2)
        self.assertTrue(client2.value().startswith(b"HTTP/1.1 502 "), client2.value())
        self.assertIn(b"every backend", client2.value())

    def test_badRequests(self):
        proxy = reverseProxy(["http://10.0.0.1:8000"])
        for data, status in [
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"405"),
            (b"GET / HTTP/1.1\r\n\r\n", b"400"),
        ]:
            channel, client = proxy.client()
            channel.dataReceived(data)
            self.assertTrue(client.value().startswith(b"HTTP/1.1 " + status), client.value())

    def test_absoluteForm(self):
        """An absolute-form target is served as its path, its authority the Host."""
        proxy = reverseProxy(["http://10.0.0.1:8000"])
        channel, client = proxy.client()
        channel.dataReceived(b"GET http://other.example/x HTTP/1.1\r\nHost: site.example\r\n\r\n")
        up, upT = proxy.acceptUpstream()
        self.assertTrue(upT.value().startswith(b"GET /x HTTP/1.1\r\nHost: other.example\r\n"), upT.value())

    def test_http10WithoutHost(self):
        """HTTP/1.0 may leave Host out: the backend gets its own authority."""
        proxy = reverseProxy(["http://10.0.0.1:8000"])
        channel, client = proxy.client()
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        up, upT = proxy.acceptUpstream()
        self.assertIn(b"\r\nHost: 10.0.0.1:8000\r\n", upT.value())
