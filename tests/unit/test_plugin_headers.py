"""
Tests for the C{headers} plugin (L{proxyd_plugins.headers}).
"""

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from proxyd.interfaces import IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf
from proxyd_plugins.headers import headers


def requestHeaders(settings, url=b"http://a.test/x", sent=None):
    """The request headers after a headers rewriter built from C{settings}."""
    flow = resultOf(PluginTester(headers.makeRewriter(settings)).request(makeFlow(url=url, headers=sent)))
    return flow.request.headers


def responseHeaders(settings, url=b"http://a.test/x", received=None):
    """The response headers after a headers rewriter built from C{settings}."""
    tester = PluginTester(headers.makeRewriter(settings))
    flow = resultOf(tester.exchange(makeFlow(url=url), makeResponse(200, headers=received, body=b"hi")))
    return flow.response.headers


class InterfaceTests(SynchronousTestCase):
    """The plugin object and its rewriters provide what proxyd looks for."""

    def test_pluginProvidesInterfaces(self):
        """The module-level object is a twisted plugin and a proxyd plugin named headers."""
        self.assertTrue(verifyObject(IPlugin, headers))
        self.assertTrue(verifyObject(IProxyPlugin, headers))
        self.assertEqual(headers.name, "headers")
        self.assertIsInstance(headers.description, str)

    def test_requestOnlyRewriterHasNoResponseHooks(self):
        """Request edits alone give a request rewriter that is never asked about responses."""
        rewriter = headers.makeRewriter({"set-request": "X-A:1"})
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertFalse(IResponseRewriter.providedBy(rewriter))
        self.assertEqual(PluginTester(rewriter).pipeline.responseStages, ())

    def test_responseOnlyRewriterHasNoRequestHooks(self):
        """Response edits alone give a response rewriter that is never asked about requests."""
        rewriter = headers.makeRewriter({"remove-response": "Server"})
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))
        self.assertFalse(IRequestRewriter.providedBy(rewriter))

    def test_bothDirectionsProvideBoth(self):
        """Request and response edits together give a rewriter with both sets of hooks."""
        rewriter = headers.makeRewriter({"add-request": "X-A:1", "set-response": "X-B:2"})
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))

    def test_neverAsksForTheBody(self):
        """Both head hooks answer None, so proxyd streams bodies and never buffers them."""
        rewriter = headers.makeRewriter({"set-request": "X-A:1", "set-response": "X-B:2"})
        flow = makeFlow(method=b"POST", body=b"data")
        self.assertIsNone(rewriter.requestHead(flow))
        flow.response = makeResponse(200)
        self.assertIsNone(rewriter.responseHead(flow))
        tester = PluginTester(rewriter, maxBodyBuffer=1)
        flow = resultOf(tester.exchange(makeFlow(method=b"POST", body=b"data"), makeResponse(200, body=b"ok")))
        self.assertEqual((flow.request.body, flow.response.body), (b"data", b"ok"))
        self.assertEqual(tester.warnings, [])


class RequestEditTests(SynchronousTestCase):
    """set-, add- and remove-request edit the request headers sent upstream."""

    def test_setReplacesEveryValue(self):
        """set-request replaces all the values of a header, whatever their case."""
        sent = [("x-a", "old1"), ("X-A", "old2"), ("Accept", "*/*")]
        result = requestHeaders({"set-request": "X-A:new"}, sent=sent)
        self.assertEqual(result.getRawHeaders(b"x-a"), [b"new"])
        self.assertEqual(result.getRawHeaders(b"accept"), [b"*/*"])

    def test_setAddsAnAbsentHeader(self):
        """set-request adds a header the request did not have."""
        self.assertEqual(requestHeaders({"set-request": "X-Debug:1"}).getRawHeaders(b"X-Debug"), [b"1"])

    def test_addAppendsAValue(self):
        """add-request keeps the values already there and appends one."""
        result = requestHeaders({"add-request": "Via-Test:b"}, sent={"Via-Test": "a"})
        self.assertEqual(result.getRawHeaders(b"via-test"), [b"a", b"b"])

    def test_removeDropsEveryNamedHeader(self):
        """remove-request takes NAME|NAME and drops every value of each, names matched without case."""
        sent = [("Cookie", "a=1"), ("cookie", "b=2"), ("X-Trace", "t"), ("Accept", "*/*")]
        result = requestHeaders({"remove-request": "COOKIE|x-trace"}, sent=sent)
        self.assertFalse(result.hasHeader(b"cookie"))
        self.assertFalse(result.hasHeader(b"x-trace"))
        self.assertEqual(result.getRawHeaders(b"accept"), [b"*/*"])

    def test_removeAbsentHeaderIsHarmless(self):
        """Removing a header the request does not have changes nothing."""
        result = requestHeaders({"remove-request": "Cookie"}, sent={"Accept": "*/*"})
        self.assertEqual(list(result.getAllRawHeaders()), [(b"Accept", [b"*/*"])])

    def test_editsRunRemoveThenSetThenAdd(self):
        """In one occurrence removal comes first, then set, then add, whatever the key order."""
        settings = {"add-request": "X-A:added", "set-request": "X-A:set", "remove-request": "X-A"}
        result = requestHeaders(settings, sent={"X-A": "sent"})
        self.assertEqual(result.getRawHeaders(b"x-a"), [b"set", b"added"])

    def test_valueKeepsColonsAndLosesOuterSpace(self):
        """Only the first colon splits NAME:VALUE, and spaces around the value are dropped."""
        result = requestHeaders({"set-request": "X-Time:  12:30:00 "})
        self.assertEqual(result.getRawHeaders(b"x-time"), [b"12:30:00"])

    def test_emptyValueAllowed(self):
        """NAME: with nothing after it sets an empty value, which HTTP allows."""
        self.assertEqual(requestHeaders({"set-request": "X-Empty:"}).getRawHeaders(b"x-empty"), [b""])

    def test_hostMaySet(self):
        """set-request=Host is allowed: it is how a request is sent with another Host."""
        result = requestHeaders({"set-request": "Host:internal.test"}, sent={"Host": "a.test"})
        self.assertEqual(result.getRawHeaders(b"host"), [b"internal.test"])

    def test_nonASCIIValueSentAsUTF8(self):
        """A value outside ASCII is sent as UTF-8."""
        self.assertEqual(requestHeaders({"set-request": "X-Name:caf\u00e9"}).getRawHeaders(b"x-name"),
                         ["caf\u00e9".encode("utf-8")])


class ResponseEditTests(SynchronousTestCase):
    """set-, add- and remove-response edit the response headers sent to the client."""

    def test_setAddRemove(self):
        """The three response edits apply to the upstream's response."""
        received = [("Server", "nginx"), ("Cache-Control", "max-age=60"), ("Vary", "Accept")]
        result = responseHeaders(
            {"remove-response": "Server", "set-response": "Cache-Control:no-store", "add-response": "Vary:Cookie"},
            received=received,
        )
        self.assertFalse(result.hasHeader(b"server"))
        self.assertEqual(result.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(result.getRawHeaders(b"vary"), [b"Accept", b"Cookie"])

    def test_requestEditsLeaveTheResponseAlone(self):
        """A request-only occurrence does not touch a response header of the same name."""
        rewriter = headers.makeRewriter({"remove-request": "X-A"})
        flow = resultOf(PluginTester(rewriter).exchange(makeFlow(headers={"X-A": "1"}),
                                                        makeResponse(200, headers={"X-A": "2"})))
        self.assertFalse(flow.request.headers.hasHeader(b"x-a"))
        self.assertEqual(flow.response.headers.getRawHeaders(b"x-a"), [b"2"])

    def test_responseBodyUntouched(self):
        """Editing response headers passes the body through as the upstream sent it."""
        tester = PluginTester(headers.makeRewriter({"set-response": "X-A:1"}))
        flow = resultOf(tester.exchange(makeFlow(), makeResponse(200, body=b"payload")))
        self.assertEqual(flow.response.body, b"payload")


class HostFilterTests(SynchronousTestCase):
    """host= limits the edits to requests whose URL host matches a glob."""

    settings = {"host": "*.a.test|b.test", "set-request": "X-A:1", "set-response": "X-B:2"}

    def test_matchingHostsEdited(self):
        """Requests to a matching host, in any case, get both edits."""
        for url in (b"http://www.a.test/", b"http://WWW.A.TEST:8080/x", b"http://b.test/"):
            self.assertEqual(requestHeaders(self.settings, url=url).getRawHeaders(b"x-a"), [b"1"], url)
            self.assertEqual(responseHeaders(self.settings, url=url).getRawHeaders(b"x-b"), [b"2"], url)

    def test_otherHostsUntouched(self):
        """Requests and responses for other hosts keep their headers as they were."""
        for url in (b"http://a.test/", b"http://c.test/", b"http://b.test.evil/"):
            self.assertFalse(requestHeaders(self.settings, url=url).hasHeader(b"x-a"), url)
            self.assertFalse(responseHeaders(self.settings, url=url).hasHeader(b"x-b"), url)

    def test_noHostMeansEveryHost(self):
        """Without host= every request is edited."""
        self.assertTrue(requestHeaders({"set-request": "X-A:1"}, url=b"http://anything.test/").hasHeader(b"x-a"))


class CompositionTests(SynchronousTestCase):
    """Several headers occurrences run in --plugin order, each seeing the previous one's edits."""

    def test_setThenAdd(self):
        """A set followed by an add leaves both values, in that order."""
        first = headers.makeRewriter({"set-request": "X-A:1"})
        second = headers.makeRewriter({"add-request": "X-A:2"})
        flow = resultOf(PluginTester(first, second).request(makeFlow(headers={"X-A": "0"})))
        self.assertEqual(flow.request.headers.getRawHeaders(b"x-a"), [b"1", b"2"])

    def test_addThenSet(self):
        """An add followed by a set leaves only the set value: the later occurrence wins."""
        first = headers.makeRewriter({"add-request": "X-A:2"})
        second = headers.makeRewriter({"set-request": "X-A:1"})
        flow = resultOf(PluginTester(first, second).request(makeFlow(headers={"X-A": "0"})))
        self.assertEqual(flow.request.headers.getRawHeaders(b"x-a"), [b"1"])

    def test_responseEditsCompose(self):
        """Response edits from two occurrences both apply, in order."""
        first = headers.makeRewriter({"set-response": "X-B:1"})
        second = headers.makeRewriter({"remove-response": "Server", "add-response": "X-B:2"})
        flow = resultOf(PluginTester(first, second).exchange(makeFlow(), makeResponse(200, headers={"Server": "x"})))
        self.assertEqual(flow.response.headers.getRawHeaders(b"x-b"), [b"1", b"2"])
        self.assertFalse(flow.response.headers.hasHeader(b"server"))


class SettingsTests(SynchronousTestCase):
    """Bad settings are refused at start-up with a message that starts with the key."""

    def assertRefused(self, settings, key, after=":"):
        """makeRewriter(settings) raises PluginSettingsError naming C{key} first."""
        error = self.assertRaises(PluginSettingsError, headers.makeRewriter, settings)
        self.assertTrue(str(error).startswith(key + after), str(error))
        return str(error)

    def test_nothingToDo(self):
        """Without any edit (host= alone, or nothing) there is nothing to run."""
        message = self.assertRefused({}, "set-request", ", ")
        self.assertIn("remove-response", message)
        self.assertIn("at least one", message)
        self.assertRefused({"host": "a.test"}, "set-request", ", ")

    def test_unknownKey(self):
        """A key the plugin does not know is refused."""
        self.assertRefused({"set-request": "X-A:1", "set": "X-B:2"}, "set")

    def test_missingColon(self):
        """set and add need NAME:VALUE."""
        self.assertRefused({"set-request": "X-A"}, "set-request")
        self.assertRefused({"add-response": "X-A=1"}, "add-response")

    def test_notAToken(self):
        """Header names must be HTTP tokens: no spaces, separators, non-ASCII or emptiness."""
        self.assertRefused({"set-request": "X A:1"}, "set-request")
        self.assertRefused({"set-response": "X(A):1"}, "set-response")
        self.assertRefused({"add-request": "X-\u00e9:1"}, "add-request")
        self.assertRefused({"add-request": ":1"}, "add-request")
        self.assertRefused({"remove-response": "X-A|Bad Name"}, "remove-response")

    def test_emptyRemoveList(self):
        """remove- needs at least one name."""
        self.assertRefused({"remove-request": "|"}, "remove-request")
        self.assertRefused({"remove-response": ""}, "remove-response")

    def test_framingRefused(self):
        """Content-Length and Transfer-Encoding are proxyd's, in any case and any edit."""
        self.assertRefused({"set-response": "Content-Length:5"}, "set-response")
        self.assertRefused({"remove-request": "X-A|transfer-encoding"}, "remove-request")
        self.assertRefused({"add-request": "CONTENT-LENGTH:0"}, "add-request")

    def test_hopByHopRefused(self):
        """Connection, Keep-Alive, Upgrade and the other hop-by-hop headers are refused."""
        for name in ("Connection", "keep-alive", "Upgrade", "TE", "Trailer", "Proxy-Authorization"):
            self.assertRefused({"set-request": name + ":x"}, "set-request")
            self.assertRefused({"remove-response": name}, "remove-response")

    def test_hostOnlySetOnRequests(self):
        """A request has exactly one Host: it can be set but not added to or removed."""
        self.assertRefused({"remove-request": "Host"}, "remove-request")
        self.assertRefused({"add-request": "host:b.test"}, "add-request")
        headers.makeRewriter({"set-request": "Host:b.test"})

    def test_controlCharactersInValue(self):
        """CR, LF, NUL and other control characters in a value are refused (they could split headers)."""
        for value in ("a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b", "a\x7fb"):
            self.assertRefused({"set-request": "X-A:" + value}, "set-request")
            self.assertRefused({"add-response": "X-A:" + value}, "add-response")

    def test_tabInValueAllowed(self):
        """A tab inside a value is legal HTTP and is kept."""
        self.assertEqual(requestHeaders({"set-request": "X-A:a\tb"}).getRawHeaders(b"x-a"), [b"a\tb"])

    def test_badHostGlob(self):
        """host= takes host globs, not URLs, and cannot be empty."""
        self.assertRefused({"host": "http://a.test/", "set-request": "X-A:1"}, "host")
        self.assertRefused({"host": "", "set-request": "X-A:1"}, "host")
