"""
Tests for L{proxyd.backends}: backend URLs, routes, round robin with
back-off, and the choice of a group by Host.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from proxyd.backends import (
    Backend,
    BackendGroup,
    Router,
    buildRouter,
    describe,
    parseBackend,
    parseRoute,
)


def assertRefused(testCase, parse, cases):
    """C{parse(given)} raises a one-line ValueError saying C{reason}, for each C{given: reason}."""
    for given, reason in cases.items():
        with testCase.assertRaises(ValueError) as e:
            parse(given)
        testCase.assertEqual(str(e.exception), reason, given)
        testCase.assertNotIn("\n", str(e.exception))


class ParseBackendTests(SynchronousTestCase):
    """L{parseBackend} splits an C{--upstream} URL once, at start-up."""

    def test_httpDefaults(self):
        """http without a port is port 80, no prefix, no TLS name, a two-part pool key."""
        b = parseBackend("http://Backend.Example")
        self.assertEqual(
            (b.url, b.scheme, b.host, b.port, b.prefix, b.tlsName, b.key),
            ("http://Backend.Example", "http", "backend.example", 80, b"", None, ("backend.example", 80)),
        )

    def test_httpsDefaults(self):
        """https is port 443, checked under its host name, with a TLS pool key."""
        b = parseBackend("HTTPS://api.example.com/")
        self.assertEqual((b.scheme, b.host, b.port, b.prefix), ("https", "api.example.com", 443, b""))
        self.assertEqual(b.tlsName, "api.example.com")
        self.assertEqual(b.key, ("https", "api.example.com", 443, "api.example.com"))

    def test_ipv6(self):
        """An IPv6 literal in brackets, with a port and a prefix; the host has no brackets."""
        b = parseBackend("http://[::1]:8080/app/")
        self.assertEqual((b.host, b.port, b.prefix, b.key), ("::1", 8080, b"/app", ("::1", 8080)))

    def test_ipv6Normalised(self):
        """An IPv6 literal is written in its compressed, lower-case form."""
        self.assertEqual(parseBackend("https://[2001:DB8:0::1]").host, "2001:db8::1")

    def test_ipv4(self):
        """An IPv4 literal with a port; over https its TLS name is the address."""
        b = parseBackend("https://10.0.0.5:8443")
        self.assertEqual((b.host, b.port, b.tlsName), ("10.0.0.5", 8443, "10.0.0.5"))

    def test_prefix(self):
        """The path loses its trailing slashes; C{/} and none are no prefix."""
        for url, prefix in [
            ("http://b", b""),
            ("http://b/", b""),
            ("http://b//", b""),
            ("http://b/app", b"/app"),
            ("http://b/app/", b"/app"),
            ("http://b/a/b//", b"/a/b"),
            ("http://b/%7Euser/", b"/%7Euser"),
        ]:
            self.assertEqual(parseBackend(url).prefix, prefix, url)

    def test_trailingDotAndIDNA(self):
        """A trailing dot goes; an international name is kept in IDNA."""
        self.assertEqual(parseBackend("http://example.com.:81").host, "example.com")
        self.assertEqual(parseBackend("http://bücher.example").host, "xn--bcher-kva.example")

    def test_whitespaceStripped(self):
        """Spaces around the URL (from a config file) are not part of it."""
        self.assertEqual(parseBackend("  http://b:81  ").port, 81)

    def test_refused(self):
        """Everything else is refused, with the URL and the reason on one line."""
        assertRefused(self, parseBackend, {
            "": "'' is not an http:// or https:// URL",
            "backend:8080": "'backend:8080' is not an http:// or https:// URL",
            "ftp://b/": "'ftp://b/' is not an http:// or https:// URL",
            "ws://b": "'ws://b' is not an http:// or https:// URL",
            "http://b/?x=1": "'http://b/?x=1': a backend URL has no query or fragment",
            "http://b/#top": "'http://b/#top': a backend URL has no query or fragment",
            "http://u:p@b/": "'http://u:p@b/': user information is not allowed in a backend URL",
            "http://": "'http://': no host",
            "http://:80": "'http://:80': no host",
            "http://b:": "'http://b:': bad port ''",
            "http://b:0": "'http://b:0': bad port '0'",
            "http://b:65536": "'http://b:65536': bad port '65536'",
            "http://b:http": "'http://b:http': bad port 'http'",
            "http://b:-1": "'http://b:-1': bad port '-1'",
            "http://b:\uff18\uff10": "'http://b:\uff18\uff10': bad port '\uff18\uff10'",
            "http://::1:80": "'http://::1:80': an IPv6 address goes in brackets, as in http://[::1]:8080",
            "http://[::1": "'http://[::1': no ']' after the IPv6 address",
            "http://[zz::1]": "'http://[zz::1]': 'zz::1' is not an IPv6 address",
            "http://[1.2.3.4]": "'http://[1.2.3.4]': '1.2.3.4' is not an IPv6 address",
            "http://[::1]x": "'http://[::1]x': only a port may follow the IPv6 address",
            "http://300.1.1.1": "'http://300.1.1.1': '300.1.1.1' is not an IPv4 address",
            "http://a..b": "'http://a..b': bad host name 'a..b'",
            "http://a b": "'http://a b': bad host name 'a b'",
            "http://b/a b": "'http://b/a b': the path has characters a URL cannot hold unencoded",
            "http://b/a\r\nX: y": "'http://b/a\\r\\nX: y': the path has characters a URL cannot hold unencoded",
        })

    def test_describe(self):
        """Logs name a backend by its URL as given."""
        self.assertEqual(describe(parseBackend("https://b:8443/app/")), "https://b:8443/app/")


class PathForTests(SynchronousTestCase):
    """L{Backend.pathFor} puts the prefix in front of the client's target."""

    def test_prefix(self):
        """The prefix comes before the path; the query is kept."""
        b = parseBackend("http://b/app/")
        self.assertEqual(b.pathFor(b"/x?q=1"), b"/app/x?q=1")
        self.assertEqual(b.pathFor(b"/"), b"/app/")
        self.assertEqual(b.pathFor(b"/?q"), b"/app/?q")

    def test_noPrefix(self):
        """Without a prefix the target is sent unchanged."""
        self.assertEqual(parseBackend("http://b/").pathFor(b"/x?q"), b"/x?q")

    def test_asterisk(self):
        """C{OPTIONS *} stays C{*}: it is about the server, not a path."""
        self.assertEqual(parseBackend("http://b/app").pathFor(b"*"), b"*")


class ParseRouteTests(SynchronousTestCase):
    """L{parseRoute} reads C{HOST=URL}."""

    def test_name(self):
        """The host is lower-cased, without a trailing dot; the URL is a L{Backend}."""
        pattern, backend = parseRoute("Shop.Example.COM.=https://10.0.0.1:8443/shop")
        self.assertEqual(pattern, "shop.example.com")
        self.assertEqual((backend.host, backend.port, backend.prefix), ("10.0.0.1", 8443, b"/shop"))

    def test_glob(self):
        """Globs are kept as globs."""
        self.assertEqual(parseRoute("*.Example.com=http://b")[0], "*.example.com")
        self.assertEqual(parseRoute("*=http://b")[0], "*")
        self.assertEqual(parseRoute("api-?.example.com=http://b")[0], "api-?.example.com")

    def test_ipv6(self):
        """An IPv6 host is given in brackets and matched without them."""
        self.assertEqual(parseRoute("[::0001]=http://b")[0], "::1")

    def test_refused(self):
        """Bad hosts and bad URLs are refused on one line."""
        assertRefused(self, parseRoute, {
            "example.com": "'example.com' is not HOST=URL",
            "=http://b": "'' is not a host name or a glob like *.example.com",
            "a b=http://b": "'a b' is not a host name or a glob like *.example.com",
            "a/b=http://b": "'a/b' is not a host name or a glob like *.example.com",
            "[a-z].com=http://b": "'[a-z].com' is not a host name or a glob like *.example.com",
            "example.com:443=http://b": "'example.com:443': routes match the Host without its port",
            "[zz]=http://b": "'zz' is not an IPv6 address",
            "example.com=ftp://b": "'ftp://b' is not an http:// or https:// URL",
            "example.com=": "'' is not an http:// or https:// URL",
        })


class BackendGroupTests(SynchronousTestCase):
    """L{BackendGroup} is a round robin that leaves dead backends out for a while."""

    def setUp(self):
        self.clock = Clock()
        self.a, self.b, self.c = (parseBackend(f"http://{n}") for n in "abc")
        self.group = BackendGroup([self.a, self.b, self.c], self.clock)

    def choices(self, count):
        return [self.group.choose() for _ in range(count)]

    def test_roundRobin(self):
        """Backends are taken in turn, in the order given."""
        self.assertEqual(self.group.backends, (self.a, self.b, self.c))
        self.assertEqual(self.choices(7), [self.a, self.b, self.c, self.a, self.b, self.c, self.a])

    def test_skipDown(self):
        """A failed backend is skipped; the others still alternate."""
        self.group.failed(self.b)
        self.assertTrue(self.group.isDown(self.b))
        self.assertFalse(self.group.isDown(self.a))
        self.assertEqual(self.choices(4), [self.a, self.c, self.a, self.c])

    def test_backoffExpiry(self):
        """After the back-off, one request tries the backend again; the others keep away."""
        self.group.failed(self.b)
        self.clock.advance(0.999)
        self.assertEqual(self.choices(2), [self.a, self.c])
        self.clock.advance(0.001)
        self.assertEqual(self.choices(4), [self.a, self.b, self.c, self.a])
        self.assertTrue(self.group.isDown(self.b))

    def test_trialFailsDoubles(self):
        """A trial that fails again doubles the back-off, up to the maximum."""
        group = BackendGroup([self.a], self.clock, baseBackoff=1.0, maxBackoff=5.0)
        group.failed(self.a)
        waits = []
        for _ in range(5):
            self.assertIsNone(group.choose())
            waited = 0
            while group.choose() is None:
                self.clock.advance(0.5)
                waited += 0.5
            waits.append(waited)
            group.failed(self.a)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 5.0, 5.0])

    def test_staleFailuresCountOnce(self):
        """Failures of connects begun before the backend went down do not double its back-off."""
        self.group.failed(self.b)
        self.group.failed(self.b)
        self.group.failed(self.b)
        self.clock.advance(1)
        self.assertIn(self.b, self.choices(3))

    def test_failureAfterExpiryDoubles(self):
        """A failure after the back-off expired, trial or not, counts as another."""
        self.group.failed(self.b)
        self.clock.advance(1)
        self.group.failed(self.b)
        self.clock.advance(1.5)
        self.assertNotIn(self.b, self.choices(3))
        self.clock.advance(0.5)
        self.assertIn(self.b, self.choices(3))

    def test_unansweredTrialRetried(self):
        """A trial whose outcome is never reported is retried after another back-off."""
        group = BackendGroup([self.a], self.clock)
        group.failed(self.a)
        self.clock.advance(1)
        self.assertIs(group.choose(), self.a)
        self.assertIsNone(group.choose())
        self.clock.advance(1)
        self.assertIs(group.choose(), self.a)

    def test_succeededResets(self):
        """A success brings the backend back at once, and the next failure starts over at the base."""
        group = BackendGroup([self.a], self.clock)
        for _ in range(3):
            group.failed(self.a)
            self.clock.advance(60)
            group.choose()
        group.succeeded(self.a)
        self.assertFalse(group.isDown(self.a))
        self.assertEqual([group.choose(), group.choose()], [self.a, self.a])
        group.failed(self.a)
        self.clock.advance(1)
        self.assertIs(group.choose(), self.a)

    def test_succeededDuringBackoff(self):
        """A connect begun earlier that succeeds brings the backend back before its back-off ends."""
        self.group.failed(self.b)
        self.group.succeeded(self.b)
        self.assertEqual(self.choices(3), [self.a, self.b, self.c])

    def test_allDown(self):
        """With every backend backing off there is no choice, until one is due a trial."""
        for b in (self.a, self.b, self.c):
            self.group.failed(b)
        self.assertIsNone(self.group.choose())
        self.clock.advance(1)
        self.assertEqual(self.choices(4), [self.a, self.b, self.c, None])

    def test_empty(self):
        """A group with no backends chooses nothing."""
        self.assertIsNone(BackendGroup([], self.clock).choose())


class RouterTests(SynchronousTestCase):
    """L{Router.groupFor} picks the group by the request's Host."""

    def setUp(self):
        clock = Clock()
        self.shop, self.wild, self.other, self.v6, self.default = (
            BackendGroup([parseBackend(f"http://{n}")], clock) for n in ("shop", "wild", "other", "v6", "default")
        )
        routes = [("*.example.com", self.wild), ("shop.example.com", self.shop), ("*.example.*", self.other)]
        self.router = Router(routes + [("::1", self.v6)], self.default)

    def test_exactBeforeGlob(self):
        """An exact name wins over a glob given before it."""
        self.assertIs(self.router.groupFor(b"shop.example.com"), self.shop)

    def test_globsInOrder(self):
        """Globs are tried in the order given."""
        self.assertIs(self.router.groupFor(b"www.example.com"), self.wild)
        self.assertIs(self.router.groupFor(b"a.b.example.com"), self.wild)
        self.assertIs(self.router.groupFor(b"www.example.org"), self.other)

    def test_default(self):
        """A host no route names goes to the default."""
        self.assertIs(self.router.groupFor(b"example.com"), self.default)
        self.assertIs(self.router.groupFor(b"elsewhere.test"), self.default)

    def test_normalised(self):
        """Case, a port, a trailing dot and surrounding spaces do not matter."""
        for host in [b"SHOP.Example.COM", b"shop.example.com:8443", b"shop.example.com.", b"shop.example.com.:443",
                     b" shop.example.com ", b"shop.example.com:"]:
            self.assertIs(self.router.groupFor(host), self.shop, host)

    def test_ipv6(self):
        """An IPv6 Host, in brackets with or without a port, in any spelling."""
        for host in [b"[::1]", b"[::1]:8443", b"[0:0::0001]"]:
            self.assertIs(self.router.groupFor(host), self.v6, host)

    def test_noOrBadHost(self):
        """No Host, or one that cannot be read, goes to the default."""
        for host in [None, b"", b":443", b"[::1", b"[zz]", b"shop.example.com:x", b"caf\xc3\xa9.example.com"]:
            self.assertIs(self.router.groupFor(host), self.default, host)

    def test_noDefault(self):
        """Without C{--upstream} an unrouted host has no group."""
        self.assertIsNone(Router([("a.test", self.shop)], None).groupFor(b"b.test"))


class BuildRouterTests(SynchronousTestCase):
    """L{buildRouter} makes the groups from the parsed options."""

    def test_grouping(self):
        """Routes for one host form one round robin, in the order given; C{--upstream} is the default."""
        clock = Clock()
        up1, up2 = parseBackend("http://u1"), parseBackend("http://u2")
        routes = [parseRoute(r) for r in ["a.test=http://a1", "*.b.test=http://b1", "A.test.=http://a2"]]
        router = buildRouter([up1, up2], routes, clock)
        a = router.groupFor(b"a.test")
        self.assertEqual([backend.host for backend in a.backends], ["a1", "a2"])
        self.assertEqual([a.choose().host for _ in range(3)], ["a1", "a2", "a1"])
        self.assertEqual([backend.host for backend in router.groupFor(b"x.b.test").backends], ["b1"])
        self.assertEqual(router.groupFor(b"c.test").backends, (up1, up2))
        self.assertIs(router.groupFor(b"a.test:443"), a)

    def test_noUpstream(self):
        """Routes alone leave unrouted hosts with no group."""
        router = buildRouter([], [parseRoute("a.test=http://a")], Clock())
        self.assertIsNone(router.groupFor(b"b.test"))

    def test_backoffSettings(self):
        """The back-off settings reach every group."""
        router = buildRouter([parseBackend("http://u")], [parseRoute("a.test=http://a")], Clock(), 2.0, 8.0)
        for host in (b"a.test", b"u.test"):
            group = router.groupFor(host)
            self.assertEqual((group.baseBackoff, group.maxBackoff), (2.0, 8.0))

    def test_backendIsValue(self):
        """Backends compare by what they are, so a parsed URL can be looked up again."""
        self.assertEqual(parseBackend("http://b/x"), parseBackend("http://b/x"))
        self.assertIsInstance(parseBackend("http://b"), Backend)
