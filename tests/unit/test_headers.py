"""
Tests for L{proxyd.headers}: hop-by-hop stripping and Via.
"""

from twisted.trial.unittest import SynchronousTestCase

from proxyd.headers import HOP_BY_HOP, addVia, connectionTokens, endToEnd


def names(headers):
    return [name for name, _ in headers]


class ConnectionTokensTests(SynchronousTestCase):
    """L{connectionTokens} collects the options named in Connection."""

    def test_tokens(self):
        """Tokens from every Connection header are lower-cased and stripped; empty ones skipped."""
        headers = [(b"Connection", b"Keep-Alive, X-Foo ,,"), (b"connection", b" close"), (b"X", b"y")]
        self.assertEqual(connectionTokens(headers), {b"keep-alive", b"x-foo", b"close"})

    def test_none(self):
        """Without a Connection header there are no tokens."""
        self.assertEqual(connectionTokens([(b"Host", b"a")]), set())


class EndToEndTests(SynchronousTestCase):
    """L{endToEnd} keeps only end-to-end headers."""

    def test_specHopByHopListStripped(self):
        """Every header in SPEC's hop-by-hop list is dropped, whatever its case."""
        spec = [b"Connection", b"Proxy-Connection", b"Keep-Alive", b"Proxy-Authorization",
                b"Proxy-Authenticate", b"TE", b"Trailer", b"Upgrade"]
        self.assertEqual(HOP_BY_HOP, frozenset(n.lower() for n in spec))
        headers = [(b"Host", b"a")]
        for name in spec:
            headers.append((name, b"x"))
            headers.append((name.upper(), b"y"))
            headers.append((name.lower(), b"z"))
        headers.append((b"Accept", b"*/*"))
        self.assertEqual(endToEnd(headers), [(b"Host", b"a"), (b"Accept", b"*/*")])

    def test_connectionNamedHeadersStripped(self):
        """Every header named in Connection is dropped too, names matched case-insensitively."""
        headers = [
            (b"Connection", b"X-Secret, x-other"),
            (b"Connection", b"Keep-Alive"),
            (b"X-Secret", b"1"),
            (b"X-OTHER", b"2"),
            (b"X-Kept", b"3"),
            (b"x-secret", b"4"),
        ]
        self.assertEqual(endToEnd(headers), [(b"X-Kept", b"3")])

    def test_repeatedHeadersKeepOrder(self):
        """Repeated headers keep their relative order and values, interleaved with others."""
        headers = [
            (b"Set-Cookie", b"a=1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Vary", b"Accept"),
            (b"Set-Cookie", b"b=2"),
            (b"Vary", b"Origin"),
            (b"Set-Cookie", b"c=3"),
        ]
        self.assertEqual(
            endToEnd(headers),
            [(b"Set-Cookie", b"a=1"), (b"Vary", b"Accept"), (b"Set-Cookie", b"b=2"),
             (b"Vary", b"Origin"), (b"Set-Cookie", b"c=3")],
        )

    def test_caseAndValuesPreserved(self):
        """Kept headers keep their original name case and exact value bytes."""
        headers = [(b"x-MiXeD", b"  spaced  value "), (b"ETag", b'"abc"')]
        self.assertEqual(endToEnd(headers), headers)

    def test_inputNotModified(self):
        """endToEnd returns a new list and leaves its input alone."""
        headers = [(b"Connection", b"close"), (b"Host", b"a")]
        copy = list(headers)
        out = endToEnd(headers)
        self.assertEqual(headers, copy)
        self.assertIsNot(out, headers)

    def test_framingKeptByDefault(self):
        """Content-Length and Transfer-Encoding are kept unless keepFraming is False."""
        headers = [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked"), (b"X", b"1")]
        self.assertEqual(endToEnd(headers), headers)
        self.assertEqual(endToEnd(headers, keepFraming=False), [(b"X", b"1")])

    def test_framingDroppedCaseInsensitive(self):
        """keepFraming=False drops framing headers whatever their case."""
        headers = [(b"content-LENGTH", b"3"), (b"TRANSFER-ENCODING", b"chunked")]
        self.assertEqual(endToEnd(headers, keepFraming=False), [])

    def test_framingNamedInConnectionKept(self):
        """
        A client cannot make proxyd drop the message's framing by naming it
        in Connection: with keepFraming (the default, used for requests),
        Content-Length and Transfer-Encoding survive.
        """
        headers = [
            (b"Connection", b"Content-Length, Transfer-Encoding"),
            (b"Content-Length", b"30"),
            (b"Host", b"a"),
        ]
        # Was a bug: returns [(b"Host", b"a")]: Content-Length is stripped because
        # Connection names it, while the caller (exchange._attach) still sends
        # the 30-byte body; the upstream then sees a request with no body and
        # reads the body as a second request (request smuggling past proxyd's
        # own 400 checks).  Same for Transfer-Encoding: chunked.
        self.assertIn((b"Content-Length", b"30"), endToEnd(headers))

    def test_keepUpgrade(self):
        """
        With keepUpgrade, Upgrade survives and exactly one Connection: upgrade
        is added; other Connection-named headers still go.
        """
        headers = [
            (b"Host", b"a"),
            (b"Connection", b"Upgrade, X-Hop"),
            (b"Upgrade", b"websocket"),
            (b"X-Hop", b"1"),
            (b"Sec-WebSocket-Key", b"k"),
        ]
        out = endToEnd(headers, keepUpgrade=True)
        self.assertEqual(
            out,
            [(b"Host", b"a"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k"),
             (b"Connection", b"upgrade")],
        )

    def test_upgradeDroppedWithoutKeepUpgrade(self):
        """Without keepUpgrade the same handshake headers lose Upgrade and Connection."""
        headers = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Host", b"a")]
        self.assertEqual(endToEnd(headers), [(b"Host", b"a")])

    def test_keepUpgradeStillStripsOtherHopByHop(self):
        """keepUpgrade keeps Upgrade only: Proxy-Authorization, TE and the like still go."""
        headers = [(b"Upgrade", b"websocket"), (b"Proxy-Authorization", b"Basic eDp5"), (b"TE", b"trailers")]
        self.assertEqual(endToEnd(headers, keepUpgrade=True),
                         [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")])

    def test_proxyCredentialsNeverForwarded(self):
        """Proxy-Authorization is never forwarded, even when not named in Connection."""
        headers = [(b"Proxy-Authorization", b"Basic dXNlcjpwdw=="), (b"Authorization", b"Bearer t")]
        self.assertEqual(endToEnd(headers), [(b"Authorization", b"Bearer t")])

    def test_empty(self):
        """No headers in, none out."""
        self.assertEqual(endToEnd([]), [])


class AddViaTests(SynchronousTestCase):
    """L{addVia} appends proxyd to Via."""

    def test_http11(self):
        """An HTTP/1.1 message gets Via: 1.1 proxyd at the end."""
        headers = [(b"Host", b"a")]
        out = addVia(headers)
        self.assertIs(out, headers)
        self.assertEqual(headers, [(b"Host", b"a"), (b"Via", b"1.1 proxyd")])

    def test_http10(self):
        """The received protocol version is what Via names."""
        self.assertEqual(addVia([], b"1.0"), [(b"Via", b"1.0 proxyd")])

    def test_existingViaKept(self):
        """An existing Via stays first; proxyd's entry comes after it, as a separate header."""
        headers = endToEnd([(b"Via", b"1.1 upstream-cache"), (b"Host", b"a")])
        addVia(headers, b"1.1")
        self.assertEqual(
            [v for n, v in headers if n.lower() == b"via"], [b"1.1 upstream-cache", b"1.1 proxyd"]
        )


class PluginViewTests(SynchronousTestCase):
    """
    requestHeaders/responseHeaders: what hooks see, filled straight into
    Headers where Twisted allows; the result must equal the public API's.
    """

    def _head(self, method, pairs):
        from proxyd.h1heads import RequestHead

        head = RequestHead.__new__(RequestHead)
        head.method = method
        head.headers = pairs
        return head

    def test_requestView(self):
        from proxyd.headers import requestHeaders

        wire = [
            (b"host", b"ignored"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
            (b"content-length", b"3"), (b"accept", b"*/*"), (b"X-Two", b"a"), (b"x-two", b"b"),
            (b"Upgrade", b"websocket"), (b"Proxy-Authorization", b"secret"),
        ]
        headers = requestHeaders(self._head(b"GET", wire), b"example.com")
        self.assertEqual(
            list(headers.getAllRawHeaders()),
            [(b"Host", [b"example.com"]), (b"Accept", [b"*/*"]), (b"X-Two", [b"a", b"b"]), (b"Upgrade", [b"websocket"])],
        )
        # Upgrade only survives on a GET.
        post = requestHeaders(self._head(b"POST", wire), b"example.com")
        self.assertFalse(post.hasHeader(b"upgrade"))

    def test_responseView(self):
        from proxyd.headers import responseHeaders

        wire = [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"close, X-Gone"), (b"X-Gone", b"1"),
                (b"ETag", b'"e"'), (b"set-cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
        headers = responseHeaders(wire)
        self.assertEqual(headers.getRawHeaders(b"etag"), [b'"e"'])
        self.assertEqual(headers.getRawHeaders(b"Set-Cookie"), [b"a=1", b"b=2"])
        self.assertFalse(headers.hasHeader(b"transfer-encoding"))
        self.assertFalse(headers.hasHeader(b"x-gone"))

    def test_directViewEqualsPublicAPI(self):
        """The shortcut builds exactly what addRawHeader would, names and order alike."""
        from proxyd import headers as module

        self.assertIs(module._view, module._viewDirect, "this Twisted should allow the direct fill")
        wire = [(b"content-type", b"a"), (b"X-FOO-bar", b"1"), (b"Connection", b"keep-alive"), (b"x-foo-BAR", b"2"),
                (b"Www-Authenticate", b"w"), (b"dnt", b"1"), (b"connection", b"X-Hop, upgrade"), (b"x-hop", b"h"),
                (b"Upgrade", b"websocket"), (b"Host", b"wire"), (b"Content-Length", b"0")]
        for excluded in (module._NOT_FROM_PLUGINS, module._NOT_FROM_PLUGINS_RESPONSE):
            for keep, host in ((None, None), (module._UPGRADE, b"example.com")):
                fast = module._viewDirect(wire, excluded, keep, host)
                public = module._viewPublic(wire, excluded, keep, host)
                self.assertEqual(list(fast.getAllRawHeaders()), list(public.getAllRawHeaders()))
                self.assertFalse(fast.hasHeader(b"x-hop"))
                self.assertEqual(fast.hasHeader(b"upgrade"), keep is not None)
                self.assertEqual(fast.getRawHeaders(b"x-foo-bar"), [b"1", b"2"])
                fast.addRawHeader(b"X-New", b"n")  # an ordinary Headers for the plugin
                self.assertEqual(fast.getRawHeaders(b"x-new"), [b"n"])

    def test_connectionNamesAreDropped(self):
        """Connection may name end-to-end headers, in several Connection headers; Host stays proxyd's."""
        from proxyd.headers import responseHeaders

        wire = [(b"Connection", b"keep-alive, X-A"), (b"X-A", b"1"), (b"x-b", b"2"), (b"connection", b"x-b, host"),
                (b"Host", b"h"), (b"X-C", b"3")]
        self.assertEqual(list(responseHeaders(wire).getAllRawHeaders()), [(b"X-C", [b"3"])])
        request = self._head(b"GET", wire)
        from proxyd.headers import requestHeaders

        self.assertEqual(list(requestHeaders(request, b"proxyd-host").getAllRawHeaders()),
                         [(b"Host", [b"proxyd-host"]), (b"X-C", [b"3"])])

    def test_spellingCacheBounded(self):
        from proxyd import headers as module

        module._viewDirect([(b"X-N%d" % i, b"v") for i in range(5000)], frozenset(), None, None)
        self.assertLessEqual(len(module._canonical), 4096)


class RequestWirePairsTests(SynchronousTestCase):
    """requestWirePairs: what a plugin left, back on the wire, and whether it upgrades."""

    def test_upgradeKeptOnGetOnly(self):
        from twisted.web.http_headers import Headers

        from proxyd.headers import requestWirePairs, wirePairs

        headers = Headers({b"Host": [b"h"], b"Upgrade": [b"websocket"], b"X-A": [b"1", b"2"], b"TE": [b"x"]})
        self.assertEqual(requestWirePairs(headers, b"GET"),
                         ([(b"Upgrade", b"websocket"), (b"X-A", b"1"), (b"X-A", b"2")], True))
        self.assertEqual(requestWirePairs(headers, b"POST"), ([(b"X-A", b"1"), (b"X-A", b"2")], False))
        headers.removeHeader(b"upgrade")
        self.assertEqual(requestWirePairs(headers, b"GET"), (wirePairs(headers), False))

    def test_notHeaders(self):
        """Something else a plugin put in place of the Headers is read through getAllRawHeaders."""
        from proxyd.headers import requestWirePairs, wirePairs

        class Duck:
            def getAllRawHeaders(self):
                return iter([(b"x-a", [b"1"]), (b"connection", [b"close"]), (b"upgrade", [b"u"])])

        self.assertEqual(wirePairs(Duck()), [(b"X-A", b"1")])
        self.assertEqual(requestWirePairs(Duck(), b"GET"), ([(b"X-A", b"1"), (b"Upgrade", b"u")], True))
