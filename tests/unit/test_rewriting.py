"""
Plugins in the data path: the exchange holds a head while its hooks run,
streams bodies unless a hook asked for one, buffers up to the limit, fixes
the framing of whatever it finally sends, and turns plugin failures into
502/504 without harming the connection's next request.  Fake transports
and clock.
"""

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase

from proxyd.interfaces import READ_BODY, TUNNEL, BodyFilter, ConnectPolicy, Deny, RequestRewriter, ResponseRewriter, Rewriter
from proxyd.message import Response
from proxyd.testing import FakeProxy

GET = b"GET http://127.0.0.1:8000/path HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


class AddHeader(RequestRewriter):
    def requestHead(self, flow):
        flow.request.headers.addRawHeader(b"X-Added", b"yes")


class TagResponse(ResponseRewriter):
    def responseHead(self, flow):
        flow.response.headers.setRawHeaders(b"X-Tag", [b"t"])


class ReadRequest(RequestRewriter):
    def requestHead(self, flow):
        return READ_BODY

    def requestBody(self, flow, body):
        return body.upper() + b"!"


class ReadResponse(ResponseRewriter):
    def responseHead(self, flow):
        return READ_BODY

    def responseBody(self, flow, body):
        return body.replace(b"hello", b"goodbye")


class Block(RequestRewriter):
    def requestHead(self, flow):
        return Response.text(403, "blocked\n")


class Boom(Rewriter):
    def requestHead(self, flow):
        if b"boom" in flow.request.url:
            raise RuntimeError("kaboom")


class _Pending:
    """A hook that answers with a new Deferred, kept in C{pending} for the test to fire."""

    def __init__(self):
        self.pending = []

    def _wait(self, flow):
        d = Deferred()
        self.pending.append(d)
        return d


class Waits(_Pending, RequestRewriter):
    requestHead = _Pending._wait


class SlowResponse(_Pending, ResponseRewriter):
    responseHead = _Pending._wait


class Doubler(BodyFilter):
    keepsLength = False

    def filterChunk(self, data):
        return data * 2


class DoubleResponse(ResponseRewriter):
    def responseHead(self, flow):
        return Doubler()


class Move(RequestRewriter):
    def requestHead(self, flow):
        flow.request.url = b"http://127.0.0.2:9000/moved"


class PipelineExchangeTests(SynchronousTestCase):
    def proxy(self, *rewriters, **config):
        proxy = FakeProxy(rewriters=rewriters, **config)
        channel, client = proxy.client()
        return proxy, channel, client

    def test_requestHeaderAddedUpstream(self):
        """A request hook's header reaches the upstream; framing stays proxyd's."""
        proxy, channel, client = self.proxy(AddHeader())
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        sent = upT.value()
        self.assertTrue(sent.startswith(b"GET /path HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"), sent)
        self.assertIn(b"X-Added: yes\r\n", sent)
        upstream.dataReceived(OK)
        self.assertTrue(client.value().endswith(b"hello"))
        self.assertFalse(client.disconnecting)

    def test_responseHeaderChanged(self):
        """A response hook edits the head; the body streams with its length."""
        proxy, channel, client = self.proxy(TagResponse())
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(OK)
        out = client.value()
        self.assertIn(b"X-Tag: t\r\n", out)
        self.assertIn(b"Content-Length: 5\r\n", out)
        self.assertTrue(out.endswith(b"\r\n\r\nhello"))

    def test_headerOnlyPluginStreams(self):
        """
        With a head-only plugin the request body is never held: it goes up
        as it arrives, with the client's transport paused by the upstream's.
        """
        proxy, channel, client = self.proxy(AddHeader(), TagResponse())
        channel.dataReceived(b"POST http://127.0.0.1:8000/up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
        upstream, upT = proxy.acceptUpstream()
        self.assertTrue(upT.value().endswith(b"Content-Length: 10\r\n\r\n01234") or b"01234" in upT.value())
        self.assertIs(upT.producer, channel.bodyProducer)
        channel.dataReceived(b"56789")
        self.assertTrue(upT.value().endswith(b"0123456789"))
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")
        self.assertIs(client.producer, upT)
        upstream.dataReceived(b"c")
        self.assertTrue(client.value().endswith(b"abc"))

    def test_requestBodyRewrittenWithLength(self):
        """A chunked body read whole and rewritten goes up with Content-Length."""
        proxy, channel, client = self.proxy(ReadRequest())
        channel.dataReceived(
            b"POST http://127.0.0.1:8000/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n"
        )
        self.assertEqual(proxy.pendingConnects(), [])
        channel.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
        upstream, upT = proxy.acceptUpstream()
        sent = upT.value()
        self.assertIn(b"Content-Length: 6\r\n", sent)
        self.assertNotIn(b"chunked", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nABCDE!"), sent)
        upstream.dataReceived(OK)
        self.assertTrue(client.value().endswith(b"hello"))
        self.assertFalse(client.disconnecting)

    def test_expectContinueAnsweredWhenBuffering(self):
        """A body a plugin reads whole is asked for with proxyd's own 100."""
        proxy, channel, client = self.proxy(ReadRequest())
        channel.dataReceived(
            b"POST http://127.0.0.1:8000/up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"ok")
        upstream, upT = proxy.acceptUpstream()
        self.assertNotIn(b"Expect", upT.value())
        self.assertTrue(upT.value().endswith(b"OK!"))

    def test_responseBodyRewrittenWithLength(self):
        """A chunked response read whole and rewritten gets Content-Length."""
        proxy, channel, client = self.proxy(ReadResponse())
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        self.assertEqual(client.value(), b"")
        upstream.dataReceived(b"0\r\n\r\n")
        out = client.value()
        self.assertIn(b"Content-Length: 7\r\n", out)
        self.assertNotIn(b"chunked", out)
        self.assertTrue(out.endswith(b"\r\n\r\ngoodbye"))
        self.assertFalse(client.disconnecting)
        self.assertEqual(proxy.factory.pool.idleCount() if hasattr(proxy.factory.pool, "idleCount") else 1, 1)

    def test_oversizeBodyPassesUntouched(self):
        """
        A body larger than --max-body-buffer is sent on unchanged, in its
        own framing, and a warning names the plugin and the URL.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proxy, channel, client = self.proxy(ReadResponse(), maxBodyBuffer=8)
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhello")
        self.assertEqual(client.value(), b"")
        upstream.dataReceived(b"hello world")
        out = client.value()
        self.assertIn(b"Content-Length: 20\r\n", out)
        self.assertTrue(out.endswith(b"hellohello world"))
        upstream.dataReceived(b"abcd")
        self.assertTrue(client.value().endswith(b"hellohello worldabcd"))
        warnings = [e for e in events if "max-body-buffer" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["plugins"], "ReadResponse")
        self.assertEqual(warnings[0]["url"], "http://127.0.0.1:8000/path")

    def test_shortCircuitSkipsUpstream(self):
        """A request hook's response is sent without any upstream; response hooks still run."""
        proxy, channel, client = self.proxy(Block(), TagResponse())
        channel.dataReceived(GET)
        self.assertEqual(proxy.pendingConnects(), [])
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 403 Forbidden\r\n"), out)
        self.assertIn(b"X-Tag: t\r\n", out)
        self.assertIn(b"Content-Length: 8\r\n", out)
        self.assertTrue(out.endswith(b"blocked\n"))
        self.assertFalse(client.disconnecting)
        client.clear()
        channel.dataReceived(GET)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403"))

    def test_shortCircuitWithUnreadBodyCloses(self):
        """Answering before the request body was read closes after the response."""
        proxy, channel, client = self.proxy(Block())
        channel.dataReceived(b"POST http://127.0.0.1:8000/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        out = client.value()
        self.assertIn(b"Connection: close\r\n", out)
        self.assertTrue(client.disconnecting or client.writeClosed)

    def test_raisingPluginIs502AndNextRequestWorks(self):
        """A hook that raises gives 502 naming the plugin; the proxy keeps serving."""
        proxy, channel, client = self.proxy(Boom())
        channel.dataReceived(b"GET http://127.0.0.1:8000/boom HTTP/1.1\r\nHost: x\r\n\r\n")
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
        self.assertIn(b"plugin Boom failed in requestHead", out)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        channel2, client2 = proxy.client()
        channel2.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(OK)
        self.assertTrue(client2.value().endswith(b"hello"))

    def test_deferredHookHoldsRequest(self):
        """The request waits for a hook's Deferred; nothing goes upstream before."""
        waits = Waits()
        proxy, channel, client = self.proxy(waits, AddHeader())
        channel.dataReceived(GET)
        self.assertEqual(proxy.pendingConnects(), [])
        waits.pending[0].callback(None)
        upstream, upT = proxy.acceptUpstream()
        self.assertIn(b"X-Added: yes", upT.value())

    def test_hookTimeoutIs504(self):
        """A hook that never answers gives 504 after --plugin-timeout."""
        waits = Waits()
        proxy, channel, client = self.proxy(waits, pluginTimeout=5.0)
        channel.dataReceived(GET)
        proxy.reactor.advance(4.9)
        self.assertEqual(client.value(), b"")
        proxy.reactor.advance(0.2)
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 504 "), out)
        self.assertIn(b"plugin Waits did not answer requestHead within 5s", out)

    def test_clientGoneCancelsHook(self):
        """A client that leaves while a hook runs cancels the hook's Deferred."""
        waits = Waits()
        proxy, channel, client = self.proxy(waits)
        channel.dataReceived(GET)
        from proxyd.testing import lose

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        lose(channel)
        self.assertTrue(waits.pending[0].called)
        proxy.reactor.advance(60)
        self.assertEqual([e for e in events if "Plugin" in e.get("log_format", "")], [])

    def test_lengthChangingFilterRechunks(self):
        """A filter that changes lengths makes proxyd chunk the response."""
        proxy, channel, client = self.proxy(DoubleResponse())
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(OK)
        out = client.value()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", out)
        self.assertNotIn(b"Content-Length", out)
        self.assertTrue(out.endswith(b"a\r\nhellohello\r\n0\r\n\r\n"), out)

    def test_urlRewriteConnectsElsewhere(self):
        """A new URL sends the request to its host, with Host following it."""
        proxy, channel, client = self.proxy(Move())
        channel.dataReceived(GET)
        self.assertEqual(proxy.pendingConnects(), [("127.0.0.2", 9000)])
        upstream, upT = proxy.acceptUpstream()
        self.assertTrue(upT.value().startswith(b"GET /moved HTTP/1.1\r\nHost: 127.0.0.2:9000\r\n"), upT.value())

    def test_headResponseKeepsLength(self):
        """A HEAD response through a response hook keeps its Content-Length and has no body."""
        proxy, channel, client = self.proxy(TagResponse(), ReadResponse())
        channel.dataReceived(b"HEAD http://127.0.0.1:8000/ HTTP/1.1\r\nHost: x\r\n\r\n")
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        out = client.value()
        self.assertIn(b"Content-Length: 1234\r\n", out)
        self.assertTrue(out.endswith(b"\r\n\r\n"))
        self.assertFalse(client.disconnecting)


class Deny5(ConnectPolicy):
    def connectDecision(self, target):
        if target.host == "denied.test":
            return Deny(451, "not here")
        if target.host == "blind.test":
            return TUNNEL
        return None


class ConnectPolicyTests(SynchronousTestCase):
    def test_denyAnswersConnect(self):
        """A Deny from a connect policy answers the CONNECT with its status, no upstream."""
        proxy = FakeProxy(rewriters=[Deny5()])
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test:443\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 451 "), client.value())
        self.assertIn(b"not here", client.value())
        self.assertEqual(proxy.pendingConnects(), [])

    def test_noOpinionConnects(self):
        """No opinion: the tunnel is made as usual."""
        proxy = FakeProxy(rewriters=[Deny5()])
        channel, client = proxy.client()
        channel.dataReceived(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(proxy.pendingConnects(), [("127.0.0.1", 443)])


class HeldResponseTests(SynchronousTestCase):
    def test_originClosesWhileResponseHookRuns(self):
        """
        An origin that sends a whole response and closes while a response
        hook is still running: the client gets the whole response, not a 502.
        """
        from proxyd.testing import lose

        slow = SlowResponse()
        proxy = FakeProxy(rewriters=[slow])
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        lose(upstream)
        self.assertEqual(client.value(), b"")
        slow.pending[0].callback(None)
        out = client.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"\r\n\r\nhello"))

    def test_truncatedWhileResponseHookRuns(self):
        """A response cut short while a hook runs still aborts the client after the head."""
        from proxyd.testing import lose

        slow = SlowResponse()
        proxy = FakeProxy(rewriters=[slow])
        channel, client = proxy.client()
        channel.dataReceived(GET)
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello")
        lose(upstream)
        slow.pending[0].callback(None)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.disconnecting)


class CommonPathTests(SynchronousTestCase):
    """What the usual exchange with a head-only plugin costs (the bench's forward GET)."""

    def test_instanceAttributesWithinSharedKeys(self):
        """
        A GET through a head-only plugin sets at most 29 attributes on its
        exchange: CPython (3.11+) shares one key table per class for up to
        that many, and one more makes every such exchange build a dict of
        its own, with slower attribute access from then on.  New per-exchange
        state on the common path belongs in class defaults, or on the rare
        paths that need it.
        """
        proxy = FakeProxy(rewriters=[AddHeader(), TagResponse()])
        channel, client = proxy.client()
        channel.dataReceived(GET)
        exchange = channel.exchange
        upstream, upT = proxy.acceptUpstream()
        upstream.dataReceived(OK)
        self.assertIn(b"X-Tag: t\r\n", client.value())
        self.assertTrue(exchange.done)
        names = sorted(vars(exchange))
        self.assertLessEqual(len(names), 29, names)
