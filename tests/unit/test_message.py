"""
Tests for L{proxyd.message}: what plugins see of a request, a response and
a flow.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from proxyd.message import ConnectTarget, Flow, Request, Response


class RequestTests(SynchronousTestCase):
    def test_strMethodAndURLBecomeBytes(self):
        """A method and URL given as str are kept as bytes."""
        request = Request("GET", "http://example.com/")
        self.assertEqual(request.method, b"GET")
        self.assertEqual(request.url, b"http://example.com/")

    def test_headersFromDictOrPairs(self):
        """Headers may be given as a dict, as pairs (repeats kept), or as Headers."""
        fromDict = Request(b"GET", b"http://a.test/", {"X-One": "1"})
        self.assertEqual(fromDict.headers.getRawHeaders(b"x-one"), [b"1"])
        fromPairs = Request(b"GET", b"http://a.test/", [(b"X-A", b"1"), ("x-a", "2")])
        self.assertEqual(fromPairs.headers.getRawHeaders(b"X-A"), [b"1", b"2"])
        headers = Headers({b"X-B": [b"b"]})
        self.assertIs(Request(b"GET", b"http://a.test/", headers).headers, headers)
        self.assertEqual(list(Request(b"GET", b"http://a.test/").headers.getAllRawHeaders()), [])

    def test_headerIsLastValue(self):
        """header() gives the last value of a repeated header, or the default."""
        request = Request(b"GET", b"http://a.test/", [(b"X-A", b"1"), (b"x-a", b"2")])
        self.assertEqual(request.header(b"X-A"), b"2")
        self.assertIsNone(request.header(b"X-Missing"))
        self.assertEqual(request.header(b"X-Missing", b"d"), b"d")

    def test_hostIsLowerCase(self):
        """host is the URL's host in lower case, and scheme is lower case too."""
        request = Request(b"GET", b"HTTP://Example.COM/Path")
        self.assertEqual(request.scheme, "http")
        self.assertEqual(request.host, "example.com")
        self.assertEqual(request.path, b"/Path")

    def test_defaultPorts(self):
        """Without a port, http means 80 and https means 443."""
        self.assertEqual(Request(b"GET", b"http://a.test/").port, 80)
        self.assertEqual(Request(b"GET", b"https://a.test/").port, 443)
        self.assertEqual(Request(b"GET", b"HTTPS://a.test/").port, 443)

    def test_explicitPort(self):
        """An explicit port is used, even the other scheme's default."""
        self.assertEqual(Request(b"GET", b"http://a.test:8080/").port, 8080)
        self.assertEqual(Request(b"GET", b"https://a.test:80/").port, 80)
        self.assertEqual(Request(b"GET", b"http://a.test:443/").port, 443)

    def test_ipv6Host(self):
        """An IPv6 literal is given without brackets, lower case, with its port."""
        request = Request(b"GET", b"http://[2001:DB8::1]:8080/a")
        self.assertEqual(request.host, "2001:db8::1")
        self.assertEqual(request.port, 8080)
        self.assertEqual(request.path, b"/a")

    def test_ipv6DefaultPort(self):
        """An IPv6 literal without a port gets the scheme's default port."""
        request = Request(b"GET", b"https://[::1]/")
        self.assertEqual(request.host, "::1")
        self.assertEqual(request.port, 443)

    def test_pathWithQuery(self):
        """path is the path and query as sent on the request line."""
        self.assertEqual(Request(b"GET", b"http://a.test/a/b?x=1&y=2").path, b"/a/b?x=1&y=2")

    def test_emptyPathIsSlash(self):
        """A URL without a path has path '/', keeping a query."""
        self.assertEqual(Request(b"GET", b"http://a.test").path, b"/")
        self.assertEqual(Request(b"GET", b"http://a.test?q=1").path, b"/?q=1")

    def test_pathKeepsNonASCIIBytes(self):
        """Bytes outside ASCII in the path come back unchanged."""
        self.assertEqual(Request(b"GET", b"http://a.test/caf\xc3\xa9?x=%20").path, b"/caf\xc3\xa9?x=%20")

    def test_urlChangeChangesProperties(self):
        """The properties follow the URL when a hook changes it."""
        request = Request(b"GET", b"http://a.test/x")
        request.url = b"https://b.test:8443/y?z"
        self.assertEqual(
            (request.scheme, request.host, request.port, request.path), ("https", "b.test", 8443, b"/y?z")
        )

    def test_hostWithUserInfo(self):
        """User information in the authority is not part of host."""
        self.assertEqual(Request(b"GET", b"http://user:pw@a.test:81/").host, "a.test")
        self.assertEqual(Request(b"GET", b"http://user:pw@a.test:81/").port, 81)


class ResponseTests(SynchronousTestCase):
    def test_makeFillsReason(self):
        """make() gives the standard reason phrase and a whole (empty) body."""
        response = Response.make(404)
        self.assertEqual(response.status, 404)
        self.assertEqual(response.reason, b"Not Found")
        self.assertEqual(response.body, b"")
        self.assertEqual(list(response.headers.getAllRawHeaders()), [])

    def test_makeKeepsGivenReasonAndBody(self):
        """make() keeps a reason given, and a str body becomes UTF-8 bytes."""
        response = Response.make(200, "h\xe9", {"X-A": "1"}, reason="Fine")
        self.assertEqual(response.reason, b"Fine")
        self.assertEqual(response.body, b"h\xc3\xa9")
        self.assertEqual(response.header(b"x-a"), b"1")

    def test_makeUnknownStatus(self):
        """A status without a standard phrase still gets a reason."""
        self.assertEqual(Response.make(599).reason, b"Error")

    def test_statusConverted(self):
        """The status is an int even when given as a string."""
        self.assertEqual(Response("201").status, 201)

    def test_bodyNoneMeansStreamed(self):
        """A Response built directly has no body (streamed) unless given one."""
        self.assertIsNone(Response(200).body)

    def test_text(self):
        """text() encodes as UTF-8 and says text/plain; charset=utf-8."""
        response = Response.text(403, "no \u2603\n")
        self.assertEqual(response.status, 403)
        self.assertEqual(response.reason, b"Forbidden")
        self.assertEqual(response.body, "no \u2603\n".encode("utf-8"))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])

    def test_textKeepsGivenContentType(self):
        """text() leaves a Content-Type the caller gave."""
        response = Response.text(200, "<p>", {b"Content-Type": b"text/html"})
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html"])

    def test_redirect(self):
        """redirect() sets Location, the status (302 by default) and a short text body."""
        response = Response.redirect("http://b.test/x")
        self.assertEqual(response.status, 302)
        self.assertEqual(response.reason, b"Found")
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"http://b.test/x"])
        self.assertEqual(response.body, b"Redirecting to http://b.test/x\n")
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")

    def test_redirectStatusAndBytes(self):
        """redirect() takes bytes and another 3xx status."""
        response = Response.redirect(b"https://b.test/", status=308)
        self.assertEqual(response.status, 308)
        self.assertEqual(response.reason, b"Permanent Redirect")
        self.assertEqual(response.header(b"Location"), b"https://b.test/")


class FlowTests(SynchronousTestCase):
    def test_idsUnique(self):
        """Every flow gets its own id, increasing."""
        flows = [Flow(Request(b"GET", b"http://a.test/")) for _ in range(100)]
        ids = [flow.id for flow in flows]
        self.assertEqual(len(set(ids)), 100)
        self.assertEqual(ids, sorted(ids))

    def test_notesNotShared(self):
        """Each flow has its own notes dict."""
        first = Flow(Request(b"GET", b"http://a.test/"))
        second = Flow(Request(b"GET", b"http://a.test/"))
        first.notes["k"] = 1
        self.assertEqual(second.notes, {})

    def test_defaults(self):
        """A new flow is a forward one with no response yet."""
        flow = Flow(Request(b"GET", b"http://a.test/"))
        self.assertEqual(flow.mode, "forward")
        self.assertIsNone(flow.response)


class ConnectTargetTests(SynchronousTestCase):
    def test_frozen(self):
        """A ConnectTarget cannot be changed by a policy."""
        target = ConnectTarget("a.test", 443)
        self.assertIsNone(target.sni)
        self.assertRaises(AttributeError, setattr, target, "host", "b.test")
