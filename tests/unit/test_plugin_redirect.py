"""
Tests for the C{redirect} plugin (L{proxyd_plugins.redirect}).
"""

from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from proxyd.interfaces import IConnectPolicy, IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf
from proxyd_plugins.headers import headers
from proxyd_plugins.redirect import redirect

API = {"from": "http://old.test/api/", "to": "https://new.test/v2/"}


def requested(settings, url, *after, **flowArgs):
    """The flow after the request hooks of a redirect rewriter (and C{after})."""
    return resultOf(PluginTester(redirect.makeRewriter(settings), *after).request(makeFlow(url=url, **flowArgs)))


def location(settings, url):
    """Where a redirect rewriter sends C{url}: the Location, or None."""
    response = requested(settings, url).response
    return None if response is None else response.header(b"location")


class InterfaceTests(SynchronousTestCase):
    """The plugin object and its rewriter provide what proxyd looks for."""

    def test_pluginProvidesInterfaces(self):
        """The module-level object is a twisted plugin and a proxyd plugin named redirect."""
        self.assertTrue(verifyObject(IPlugin, redirect))
        self.assertTrue(verifyObject(IProxyPlugin, redirect))
        self.assertEqual(redirect.name, "redirect")
        self.assertIsInstance(redirect.description, str)

    def test_rewriterIsRequestRewriterOnly(self):
        """The rewriter has request hooks only, in both modes."""
        for status in ("302", "transparent"):
            rewriter = redirect.makeRewriter(dict(API, status=status))
            self.assertTrue(verifyObject(IRequestRewriter, rewriter))
            self.assertFalse(IResponseRewriter.providedBy(rewriter))
            self.assertFalse(IConnectPolicy.providedBy(rewriter))


class RedirectTests(SynchronousTestCase):
    """With a 3xx status, matching requests are answered with a redirect to the new URL."""

    def test_default302(self):
        """By default the answer is a 302 whose Location is to= plus the rest of the URL."""
        flow = requested(API, b"http://old.test/api/users?id=1")
        self.assertEqual(flow.response.status, 302)
        self.assertEqual(flow.response.header(b"location"), b"https://new.test/v2/users?id=1")
        self.assertEqual(flow.request.url, b"http://old.test/api/users?id=1")

    def test_statuses(self):
        """status= chooses 301, 302, 307 or 308."""
        for status in (301, 302, 307, 308):
            flow = requested(dict(API, status=str(status)), b"http://old.test/api/x")
            self.assertEqual(flow.response.status, status)
            self.assertEqual(flow.response.header(b"location"), b"https://new.test/v2/x")

    def test_exactPrefix(self):
        """A URL equal to from= maps to to= itself."""
        self.assertEqual(location(API, b"http://old.test/api/"), b"https://new.test/v2/")

    def test_nonMatchingGoesUpstream(self):
        """A URL outside the prefix is left alone and gets the upstream's response."""
        for url in (b"http://old.test/apix", b"http://old.test/", b"https://old.test/api/x",
                    b"http://other.test/api/x", b"http://old.test.evil/api/x", b"http://old.test:8080/api/x"):
            tester = PluginTester(redirect.makeRewriter(API))
            upstream = makeResponse(200, body=b"page")
            flow = resultOf(tester.exchange(makeFlow(url=url), upstream))
            self.assertIs(flow.response, upstream, url)
            self.assertEqual(flow.request.url, url)

    def test_schemeAndHostWithoutCase(self):
        """Scheme and host are compared without regard to case, in the request and in from=."""
        self.assertEqual(location(API, b"HTTP://OLD.Test/api/x"), b"https://new.test/v2/x")
        upper = {"from": "HTTP://Old.TEST/api/", "to": "http://new.test/"}
        self.assertEqual(location(upper, b"http://old.test/api/x"), b"http://new.test/x")

    def test_pathWithCase(self):
        """The path is compared exactly, case included."""
        self.assertIsNone(location(API, b"http://old.test/API/x"))

    def test_defaultPortSameAsNone(self):
        """:80 for http (and :443 for https) is the same as no port, on either side."""
        self.assertEqual(location(API, b"http://old.test:80/api/x"), b"https://new.test/v2/x")
        explicit = {"from": "http://old.test:80/api/", "to": "https://new.test:443/v2/"}
        self.assertEqual(location(explicit, b"http://old.test/api/x"), b"https://new.test/v2/x")

    def test_otherPorts(self):
        """A port other than the default is part of the origin."""
        local = {"from": "http://old.test:8080/", "to": "http://localhost:3000/"}
        self.assertEqual(location(local, b"http://old.test:8080/a?b"), b"http://localhost:3000/a?b")
        self.assertIsNone(location(local, b"http://old.test/a"))

    def test_originPrefix(self):
        """A prefix without a path is the whole origin: no other host that merely starts the same matches."""
        origin = {"from": "http://old.test", "to": "https://new.test"}
        self.assertEqual(location(origin, b"http://old.test/a/b?c"), b"https://new.test/a/b?c")
        self.assertEqual(location(origin, b"http://old.test"), b"https://new.test/")
        self.assertIsNone(location(origin, b"http://old.test.evil/"))
        self.assertIsNone(location(origin, b"http://old.test:81/"))

    def test_ipv6Origin(self):
        """An IPv6 origin is matched with its brackets and port."""
        v6 = {"from": "http://[2001:DB8::1]:8080/", "to": "http://[::1]/"}
        self.assertEqual(location(v6, b"http://[2001:db8::1]:8080/x"), b"http://[::1]/x")
        self.assertIsNone(location(v6, b"http://[2001:db8::1]/x"))

    def test_fileNamePrefix(self):
        """Prefixes need not end with a slash: a page can map to another page, keeping the query."""
        page = {"from": "http://old.test/index.html", "to": "http://new.test/home.html"}
        self.assertEqual(location(page, b"http://old.test/index.html?lang=en"), b"http://new.test/home.html?lang=en")

    def test_redirectPassesResponseRewriters(self):
        """The redirect still goes through a response rewriter given after it."""
        after = headers.makeRewriter({"set-response": "X-Redirected:1"})
        flow = requested(API, b"http://old.test/api/x", after)
        self.assertEqual(flow.response.status, 302)
        self.assertEqual(flow.response.header(b"x-redirected"), b"1")

    def test_methodAndBodyKept(self):
        """A 307 answers a POST from its head, without reading its body."""
        rewriter = redirect.makeRewriter(dict(API, status="307"))
        flow = makeFlow(method=b"POST", url=b"http://old.test/api/x", body=b"data")
        self.assertEqual(rewriter.requestHead(flow).status, 307)


class TransparentTests(SynchronousTestCase):
    """With status=transparent, matching requests are sent to the new URL instead."""

    settings = dict(API, status="transparent")

    def test_urlRewritten(self):
        """The request's URL becomes the new one, and no response is made."""
        flow = requested(self.settings, b"http://old.test/api/users?id=1")
        self.assertIsNone(flow.response)
        self.assertEqual(flow.request.url, b"https://new.test/v2/users?id=1")
        self.assertEqual((flow.request.scheme, flow.request.host, flow.request.port), ("https", "new.test", 443))
        self.assertEqual(flow.request.path, b"/v2/users?id=1")

    def test_upstreamAnswers(self):
        """The new origin's response goes to the client."""
        tester = PluginTester(redirect.makeRewriter(self.settings))
        upstream = makeResponse(200, body=b"from new")
        flow = resultOf(tester.exchange(makeFlow(url=b"http://old.test/api/x"), upstream))
        self.assertIs(flow.response, upstream)

    def test_nonMatchingUntouched(self):
        """A URL outside the prefix keeps its URL."""
        flow = requested(self.settings, b"http://old.test/other")
        self.assertEqual(flow.request.url, b"http://old.test/other")

    def test_laterRewritersSeeNewURL(self):
        """Request hooks after the redirect see the new URL and host."""
        after = headers.makeRewriter({"host": "new.test", "set-request": "X-Moved:1"})
        flow = requested(self.settings, b"http://old.test/api/x", after)
        self.assertEqual(flow.request.header(b"x-moved"), b"1")

    def test_prefixInsideTargetAllowed(self):
        """Transparently, to= may lie under from=: each request is rewritten once."""
        settings = {"from": "http://a.test/", "to": "http://a.test/mirror/", "status": "transparent"}
        flow = requested(settings, b"http://a.test/x")
        self.assertEqual(flow.request.url, b"http://a.test/mirror/x")


class SettingsTests(SynchronousTestCase):
    """Bad settings are refused at start-up with a message that starts with the key."""

    def assertRefused(self, settings, key):
        """makeRewriter(settings) raises PluginSettingsError naming C{key} first."""
        error = self.assertRaises(PluginSettingsError, redirect.makeRewriter, settings)
        self.assertTrue(str(error).startswith(key + ":"), str(error))
        return str(error)

    def test_required(self):
        """from= and to= are both required and cannot be empty."""
        self.assertRefused({"to": "http://new.test/"}, "from")
        self.assertRefused({"from": "http://old.test/"}, "to")
        self.assertRefused({"from": "", "to": "http://new.test/"}, "from")

    def test_unknownKey(self):
        """A key the plugin does not know is refused."""
        self.assertRefused(dict(API, code="301"), "code")

    def test_notAbsoluteHTTP(self):
        """Prefixes must be absolute http:// or https:// URLs."""
        for key in ("from", "to"):
            for value in ("/api/", "old.test/api/", "ftp://old.test/", "ws://old.test/", "://old.test/"):
                self.assertRefused(dict(API, **{key: value}), key)

    def test_noHost(self):
        """A prefix must name a host."""
        self.assertRefused(dict(API, **{"from": "http:///api/"}), "from")
        self.assertRefused(dict(API, to="https://:8080/v2/"), "to")
        self.assertRefused(dict(API, to="https://[]/v2/"), "to")

    def test_spacesAndControlCharacters(self):
        """Spaces, CR, LF and NUL in a prefix are refused (they would split the Location header)."""
        for value in ("http://old.test/a b/", "http://old.test/\r\nX: 1/", "http://old.test/\x00/",
                      "http://old.test/\t/"):
            self.assertRefused(dict(API, **{"from": value}), "from")
            self.assertRefused(dict(API, to=value.replace("old", "new")), "to")

    def test_badPort(self):
        """The port must be a number from 1 to 65535."""
        for value in ("http://old.test:0/", "http://old.test:65536/", "http://old.test:x/", "http://[::1]x/"):
            self.assertRefused(dict(API, **{"from": value}), "from")

    def test_fragmentAndUserInfo(self):
        """A fragment (never sent in requests) and user information are refused."""
        self.assertRefused(dict(API, **{"from": "http://old.test/api/#top"}), "from")
        self.assertRefused(dict(API, to="https://user:pw@new.test/v2/"), "to")

    def test_badStatus(self):
        """status= is one of 301, 302, 307, 308 or transparent."""
        for status in ("200", "303", "404", "Transparent", ""):
            self.assertRefused(dict(API, status=status), "status")

    def test_slashMismatch(self):
        """to= ends with a slash exactly when from= does, or paths would be glued or doubled."""
        self.assertRefused({"from": "http://old.test/api/", "to": "http://new.test/v2"}, "to")
        self.assertRefused({"from": "http://old.test/api", "to": "http://new.test/v2/"}, "to")
        redirect.makeRewriter({"from": "http://old.test/api/", "to": "http://new.test"})

    def test_redirectLoop(self):
        """A 3xx whose target lies under from= would redirect forever, and is refused."""
        message = self.assertRefused({"from": "http://a.test/", "to": "http://A.test:80/b/"}, "to")
        self.assertIn("transparent", message)
