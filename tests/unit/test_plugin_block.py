"""
Tests for the C{block} plugin (L{proxyd_plugins.block}).
"""

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from proxyd.interfaces import (
    Deny,
    IConnectPolicy,
    IProxyPlugin,
    IRequestRewriter,
    IResponseRewriter,
    PluginSettingsError,
)
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf
from proxyd_plugins.block import block
from proxyd_plugins.headers import headers


def requested(settings, url, *after):
    """The flow after the request hooks of a block rewriter (and C{after})."""
    return resultOf(PluginTester(block.makeRewriter(settings), *after).request(makeFlow(url=url)))


class InterfaceTests(SynchronousTestCase):
    """The plugin object and its rewriter provide what proxyd looks for."""

    def test_pluginProvidesInterfaces(self):
        """The module-level object is a twisted plugin and a proxyd plugin named block."""
        self.assertTrue(verifyObject(IPlugin, block))
        self.assertTrue(verifyObject(IProxyPlugin, block))
        self.assertEqual(block.name, "block")
        self.assertIsInstance(block.description, str)

    def test_rewriterIsRequestRewriterAndConnectPolicy(self):
        """The rewriter has request hooks and a connect policy, and no response hooks."""
        rewriter = block.makeRewriter({"hosts": "ads.test"})
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertTrue(verifyObject(IConnectPolicy, rewriter))
        self.assertFalse(IResponseRewriter.providedBy(rewriter))


class RequestTests(SynchronousTestCase):
    """Requests to blocked hosts or URLs are answered without going upstream."""

    def test_blockedHostAnswered403(self):
        """A request to a blocked host gets a text/plain 403 naming the policy and the URL."""
        flow = requested({"hosts": "ads.test"}, b"http://ads.test/banner?id=1")
        response = flow.response
        self.assertEqual(response.status, 403)
        self.assertEqual(response.reason, b"Forbidden")
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(
            response.body, b"proxyd: 403 Forbidden: blocked by proxyd policy (http://ads.test/banner?id=1)\n"
        )

    def test_hostGlobs(self):
        """hosts= globs match the URL's host in any case, with or without a port or trailing dot."""
        settings = {"hosts": "*.ads.test|tracker.test"}
        for url in (b"http://x.ads.test/", b"http://A.B.ADS.TEST:8080/", b"http://tracker.test./p",
                    b"https://tracker.test/"):
            self.assertEqual(requested(settings, url).response.status, 403, url)
        for url in (b"http://ads.test/", b"http://tracker.test.example/", b"http://example.test/tracker.test"):
            self.assertIsNone(requested(settings, url).response, url)

    def test_urlGlobs(self):
        """urls= globs match the whole URL, scheme and host without regard to case."""
        settings = {"urls": "http://a.test/ads/*|*://*/pixel.gif"}
        for url in (b"http://a.test/ads/1.png", b"HTTP://A.TEST/ads/", b"https://b.test/x/pixel.gif"):
            self.assertEqual(requested(settings, url).response.status, 403, url)
        for url in (b"http://a.test/ADS/1.png", b"http://a.test/", b"https://a.test/ads/1.png"):
            self.assertIsNone(requested(settings, url).response, url)

    def test_hostsOrUrls(self):
        """With both keys, matching either one blocks."""
        settings = {"hosts": "ads.test", "urls": "*://*/track*"}
        self.assertEqual(requested(settings, b"http://ads.test/").response.status, 403)
        self.assertEqual(requested(settings, b"http://b.test/tracker").response.status, 403)
        self.assertIsNone(requested(settings, b"http://b.test/page").response)

    def test_otherRequestsGoUpstream(self):
        """A request that matches nothing gets the upstream's response, untouched."""
        tester = PluginTester(block.makeRewriter({"hosts": "ads.test"}))
        upstream = makeResponse(200, headers={"X-Up": "1"}, body=b"page")
        flow = resultOf(tester.exchange(makeFlow(url=b"http://news.test/"), upstream))
        self.assertIs(flow.response, upstream)
        self.assertEqual(flow.response.body, b"page")

    def test_statusAndMessage(self):
        """status= and message= choose the answer's status and the text in its body."""
        flow = requested({"urls": "http://a.test/*", "status": "451", "message": "not here, sorry"},
                         b"http://a.test/x")
        self.assertEqual(flow.response.status, 451)
        self.assertEqual(flow.response.body,
                         b"proxyd: 451 Unavailable For Legal Reasons: not here, sorry (http://a.test/x)\n")

    def test_messageInUTF8(self):
        """A message outside ASCII is sent as UTF-8."""
        flow = requested({"hosts": "a.test", "message": "gesperrt \u2013 Richtlinie"}, b"http://a.test/")
        self.assertIn("gesperrt \u2013 Richtlinie".encode("utf-8"), flow.response.body)

    def test_laterRequestHooksSkipped(self):
        """A blocked request never reaches the request hooks given after block."""
        after = headers.makeRewriter({"set-request": "X-Seen:1"})
        flow = requested({"hosts": "ads.test"}, b"http://ads.test/", after)
        self.assertFalse(flow.request.headers.hasHeader(b"x-seen"))

    def test_blockedAnswerPassesResponseRewriters(self):
        """The 403 still goes through a response rewriter given after block."""
        after = headers.makeRewriter({"set-response": "X-Policy:blocked", "set-request": "X-Seen:1"})
        flow = requested({"hosts": "ads.test"}, b"http://ads.test/", after)
        self.assertEqual(flow.response.status, 403)
        self.assertEqual(flow.response.header(b"x-policy"), b"blocked")
        self.assertFalse(flow.request.headers.hasHeader(b"x-seen"))

    def test_doesNotAskForTheBody(self):
        """A blocked POST is answered from its head alone; an unblocked one streams."""
        rewriter = block.makeRewriter({"hosts": "ads.test"})
        self.assertIsNone(rewriter.requestHead(makeFlow(method=b"POST", url=b"http://ok.test/", body=b"x")))
        tester = PluginTester(rewriter, maxBodyBuffer=1)
        flow = resultOf(tester.request(makeFlow(method=b"POST", url=b"http://ok.test/", body=b"data")))
        self.assertEqual(flow.request.body, b"data")
        self.assertEqual(tester.warnings, [])


class ConnectTests(SynchronousTestCase):
    """CONNECTs to blocked hosts are denied; others get no opinion."""

    def test_hostDenied(self):
        """A CONNECT to a host matching hosts= is denied with the status and message."""
        tester = PluginTester(block.makeRewriter({"hosts": "*.ads.test"}))
        self.assertEqual(resultOf(tester.connect("x.ads.test", 443)), Deny(403, "blocked by proxyd policy"))

    def test_statusAndMessageUsed(self):
        """The denial carries status= and message=."""
        tester = PluginTester(block.makeRewriter({"hosts": "ads.test", "status": "404", "message": "gone"}))
        self.assertEqual(resultOf(tester.connect("ads.test", 8443)), Deny(404, "gone"))

    def test_sniDenied(self):
        """In mitm mode a CONNECT to an address is denied once its TLS server name matches."""
        tester = PluginTester(block.makeRewriter({"hosts": "ads.test"}))
        self.assertIsNone(resultOf(tester.connect("192.0.2.1", 443)))
        self.assertEqual(resultOf(tester.connect("192.0.2.1", 443, sni="ADS.test")).status, 403)

    def test_otherHostsNoOpinion(self):
        """A CONNECT to any other host gets no opinion, so later policies decide."""
        tester = PluginTester(block.makeRewriter({"hosts": "ads.test"}))
        self.assertIsNone(resultOf(tester.connect("news.test", 443, sni="news.test")))

    def test_urlGlobsNeverDeny(self):
        """URL globs cannot judge a CONNECT, whose URL is not known yet."""
        tester = PluginTester(block.makeRewriter({"urls": "https://ads.test/*|*://*"}))
        self.assertIsNone(resultOf(tester.connect("ads.test", 443)))
        self.assertIsNone(resultOf(tester.connect("ads.test", 443, sni="ads.test")))


class SettingsTests(SynchronousTestCase):
    """Bad settings are refused at start-up with a message that starts with the key."""

    def assertRefused(self, settings, key):
        """makeRewriter(settings) raises PluginSettingsError naming C{key} first."""
        error = self.assertRaises(PluginSettingsError, block.makeRewriter, settings)
        self.assertTrue(str(error).startswith(key + ":"), str(error))
        return str(error)

    def test_nothingToBlock(self):
        """Without hosts= or urls= nothing would be blocked."""
        self.assertIn("at least one", self.assertRefused({}, "hosts, urls"))
        self.assertRefused({"status": "404"}, "hosts, urls")

    def test_emptyGlobLists(self):
        """hosts= and urls= given empty are refused rather than blocking nothing."""
        self.assertRefused({"hosts": ""}, "hosts")
        self.assertRefused({"hosts": "a.test", "urls": " | "}, "urls")

    def test_unknownKey(self):
        """A key the plugin does not know is refused."""
        self.assertRefused({"hosts": "a.test", "host": "b.test"}, "host")

    def test_badGlobs(self):
        """hosts= takes host globs (no URLs) and urls= takes URL globs (with ://)."""
        self.assertRefused({"hosts": "http://a.test/"}, "hosts")
        self.assertRefused({"hosts": "a.test:443"}, "hosts")
        self.assertRefused({"urls": "a.test/ads/*"}, "urls")

    def test_badStatus(self):
        """status= must be a whole number from 400 to 599."""
        for status in ("200", "302", "600", "abc", ""):
            self.assertRefused({"hosts": "a.test", "status": status}, "status")

    def test_badMessage(self):
        """message= must be one non-empty line without control characters."""
        for message in ("", "  ", "a\r\nb", "a\nb", "a\x00b"):
            self.assertRefused({"hosts": "a.test", "message": message}, "message")
