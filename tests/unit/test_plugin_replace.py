# -*- test-case-name: tests.unit.test_plugin_replace -*-
"""
Tests for L{proxyd_plugins.replace}: which bodies it asks for, how it
takes content codings and charsets off and puts them back, and what it
leaves alone.
"""

import gzip
import zlib

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from proxyd.interfaces import READ_BODY, IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf
from proxyd_plugins.replace import replace


def _html(body, **headers):
    items = [("Content-Type", "text/html; charset=utf-8")]
    items.extend((name.replace("_", "-"), value) for name, value in headers.items())
    return makeResponse(200, items, body)


class PluginTests(SynchronousTestCase):
    """The plugin object and its settings."""

    def test_providesInterfaces(self):
        """The plugin is a twisted plugin and a proxyd plugin named replace."""
        self.assertTrue(verifyObject(IPlugin, replace))
        self.assertTrue(verifyObject(IProxyPlugin, replace))
        self.assertEqual(replace.name, "replace")

    def test_responseRewriterByDefault(self):
        """Without direction, the rewriter sees responses only."""
        rewriter = replace.makeRewriter({"pattern": "a"})
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))
        self.assertFalse(IRequestRewriter.providedBy(rewriter))

    def test_requestRewriter(self):
        """direction=request gives a request rewriter only."""
        rewriter = replace.makeRewriter({"pattern": "a", "direction": "request"})
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertFalse(IResponseRewriter.providedBy(rewriter))

    def test_bothRewriter(self):
        """direction=both gives a rewriter for both."""
        rewriter = replace.makeRewriter({"pattern": "a", "direction": "both"})
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))

    def assertRefused(self, settings, key):
        error = self.assertRaises(PluginSettingsError, replace.makeRewriter, settings)
        self.assertTrue(str(error).startswith(key + ":"), str(error))
        return str(error)

    def test_patternRequired(self):
        """Without a pattern (or with an empty one) the plugin refuses to start."""
        self.assertRefused({}, "pattern")
        self.assertRefused({"pattern": ""}, "pattern")

    def test_badPattern(self):
        """A pattern re cannot compile is refused, naming the key."""
        self.assertRefused({"pattern": "a("}, "pattern")

    def test_unknownKey(self):
        """A misspelt key is refused."""
        self.assertRefused({"pattern": "a", "replacment": "b"}, "replacment")

    def test_badDirection(self):
        """direction takes response, request or both."""
        self.assertRefused({"pattern": "a", "direction": "up"}, "direction")

    def test_badReplacementGroup(self):
        """A replacement naming a group the pattern lacks is refused at start."""
        self.assertRefused({"pattern": "(a)", "replacement": r"\2"}, "replacement")
        self.assertRefused({"pattern": "(?P<x>a)", "replacement": r"\g<y>"}, "replacement")

    def test_badReplacementEscape(self):
        """A replacement with a bad escape is refused at start."""
        self.assertRefused({"pattern": "a", "replacement": "b\\"}, "replacement")
        self.assertRefused({"pattern": "a", "replacement": r"\q"}, "replacement")

    def test_badHostAndURL(self):
        """host and url take globs; a URL glob needs a scheme."""
        self.assertRefused({"pattern": "a", "host": "a.test/x"}, "host")
        self.assertRefused({"pattern": "a", "url": "a.test/x"}, "url")

    def test_badTypes(self):
        """types takes media types separated by |."""
        self.assertRefused({"pattern": "a", "types": "html"}, "types")
        self.assertRefused({"pattern": "a", "types": "|"}, "types")

    def test_badMaxDecoded(self):
        """max-decoded takes a size of at least one byte."""
        self.assertRefused({"pattern": "a", "max-decoded": "lots"}, "max-decoded")
        self.assertRefused({"pattern": "a", "max-decoded": "0"}, "max-decoded")


class ResponseTests(SynchronousTestCase):
    """Replacing in response bodies, through the pipeline as an exchange runs it."""

    def setUp(self):
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def respond(self, settings, response, url=b"http://example.com/page", **testerArgs):
        tester = PluginTester(replace.makeRewriter(settings), **testerArgs)
        flow = resultOf(tester.response(makeFlow(url=url), response))
        return tester, flow

    def test_replacesInHTML(self):
        """Every match in a text/html body is replaced."""
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(b"<p>cat and cat</p>"))
        self.assertEqual(flow.response.body, b"<p>dog and dog</p>")

    def test_replacesInJSON(self):
        """application/json and +json types are text."""
        for contentType in ("application/json", "application/problem+json; charset=utf-8"):
            response = makeResponse(200, [("Content-Type", contentType)], b'{"debug": false}')
            _, flow = self.respond({"pattern": "false", "replacement": "true"}, response)
            self.assertEqual(flow.response.body, b'{"debug": true}')

    def test_replacesInJavaScript(self):
        """application/javascript is text."""
        response = makeResponse(200, [("Content-Type", "application/javascript")], b"track(); run();")
        _, flow = self.respond({"pattern": r"track\(\);\s*"}, response)
        self.assertEqual(flow.response.body, b"run();")

    def test_imageNotBuffered(self):
        """
        An image/png response gets no body hook: the head hook answers None,
        so the body streams through untouched.
        """
        rewriter = replace.makeRewriter({"pattern": "cat", "replacement": "dog"})
        flow = makeFlow()
        flow.response = makeResponse(200, [("Content-Type", "image/png")], None)
        self.assertIsNone(rewriter.responseHead(flow))
        plan = resultOf(PluginTester(rewriter).pipeline.runResponseHead(flow))
        self.assertEqual(plan.readers, [])

        _, flow = self.respond({"pattern": "cat", "replacement": "dog"},
                               makeResponse(200, [("Content-Type", "image/png")], b"\x89PNGcat"))
        self.assertEqual(flow.response.body, b"\x89PNGcat")

    def test_noContentTypeNotBuffered(self):
        """A response without Content-Type is not read."""
        rewriter = replace.makeRewriter({"pattern": "cat"})
        flow = makeFlow()
        flow.response = makeResponse(200, None, None)
        self.assertIsNone(rewriter.responseHead(flow))

    def test_textAsksForBody(self):
        """A text response head is answered READ_BODY."""
        rewriter = replace.makeRewriter({"pattern": "cat"})
        flow = makeFlow()
        flow.response = _html(None)
        self.assertIs(rewriter.responseHead(flow), READ_BODY)

    def test_typesOverride(self):
        """types= replaces the default set: text/html is then left alone."""
        settings = {"pattern": "cat", "replacement": "dog", "types": "image/svg+xml|text/x-*"}
        _, flow = self.respond(settings, _html(b"cat"))
        self.assertEqual(flow.response.body, b"cat")
        svg = makeResponse(200, [("Content-Type", "IMAGE/SVG+XML")], b"<svg>cat</svg>")
        _, flow = self.respond(settings, svg)
        self.assertEqual(flow.response.body, b"<svg>dog</svg>")

    def test_noMatchKeepsBytes(self):
        """When nothing matches the body hook keeps the body (answers None)."""
        rewriter = replace.makeRewriter({"pattern": "cat", "replacement": "dog"})
        flow = makeFlow()
        flow.response = _html(None)
        self.assertIsNone(rewriter.responseBody(flow, b"no felines"))

    def test_wholeBodyHook(self):
        """responseBody given a whole body answers the new bytes."""
        rewriter = replace.makeRewriter({"pattern": "cat", "replacement": "dog"})
        flow = makeFlow()
        flow.response = _html(None)
        self.assertEqual(rewriter.responseBody(flow, b"a cat"), b"a dog")

    def test_groups(self):
        """\\1 and \\g<name> in the replacement refer to the pattern's groups."""
        settings = {"pattern": r"(?P<key>\w+)=(\d+)", "replacement": r"\2=\g<key>"}
        _, flow = self.respond(settings, makeResponse(200, [("Content-Type", "text/plain")], b"a=1 b=2"))
        self.assertEqual(flow.response.body, b"1=a 2=b")

    def test_gzip(self):
        """A gzip body is decoded, replaced and gzipped again; Content-Encoding stays."""
        response = _html(gzip.compress(b"<p>cat</p>" * 100), Content_Encoding="gzip")
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, response)
        self.assertEqual(gzip.decompress(flow.response.body), b"<p>dog</p>" * 100)
        self.assertEqual(flow.response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])

    def test_xGzipMultiMember(self):
        """x-gzip is gzip, and concatenated gzip members are one body."""
        body = gzip.compress(b"cat ") + gzip.compress(b"cat")
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(body, Content_Encoding="x-gzip"))
        self.assertEqual(gzip.decompress(flow.response.body), b"dog dog")

    def test_deflate(self):
        """deflate with the zlib wrapper comes back zlib-wrapped."""
        response = _html(zlib.compress(b"a cat"), Content_Encoding="deflate")
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, response)
        self.assertEqual(zlib.decompress(flow.response.body), b"a dog")

    def test_rawDeflate(self):
        """deflate sent raw (no zlib wrapper) is read and comes back raw."""
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = compressor.compress(b"a cat") + compressor.flush()
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(body, Content_Encoding="deflate"))
        self.assertEqual(zlib.decompress(flow.response.body, -zlib.MAX_WBITS), b"a dog")

    def test_brotliUntouched(self):
        """
        A br body is not read at all (the head hook answers None), the
        bytes pass as they are, and it is logged once at info.
        """
        rewriter = replace.makeRewriter({"pattern": "cat"})
        flow = makeFlow()
        flow.response = _html(None, Content_Encoding="br")
        self.assertIsNone(rewriter.responseHead(flow))
        self.assertIsNone(rewriter.responseBody(flow, b"\x0b\x02\x80cat\x03"))
        events = [e for e in self.log if "reason" in e]
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertIn("br", events[0]["reason"])

        _, flow = self.respond({"pattern": "cat"}, _html(b"\x0b\x02\x80cat\x03", Content_Encoding="br"))
        self.assertEqual(flow.response.body, b"\x0b\x02\x80cat\x03")

    def test_stackedCodingWithUnknown(self):
        """A body coded gzip then something unknown is left alone."""
        rewriter = replace.makeRewriter({"pattern": "cat"})
        flow = makeFlow()
        flow.response = _html(None, Content_Encoding="gzip, zstd")
        self.assertIsNone(rewriter.responseHead(flow))

    def test_identity(self):
        """Content-Encoding: identity is no coding."""
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(b"cat", Content_Encoding="identity"))
        self.assertEqual(flow.response.body, b"dog")

    def test_corruptGzipUntouched(self):
        """A body that is not the gzip it claims to be passes as it came."""
        truncated = gzip.compress(b"cat" * 1000)[:-12]
        for body in (b"cat, not gzip", truncated, gzip.compress(b"cat") + b"junk"):
            _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(body, Content_Encoding="gzip"))
            self.assertEqual(flow.response.body, body)

    def test_gzipBombCapped(self):
        """A body decoding to more than max-decoded is not decoded further and passes untouched."""
        bomb = gzip.compress(b"cat" * 100000)
        _, flow = self.respond({"pattern": "cat", "max-decoded": "64k"}, _html(bomb, Content_Encoding="gzip"))
        self.assertEqual(flow.response.body, bomb)
        self.assertTrue(any("max-decoded" in e.get("reason", "") for e in self.log))

    def test_identityOverCap(self):
        """An uncoded body over max-decoded is left alone too."""
        _, flow = self.respond({"pattern": "cat", "max-decoded": "4"}, _html(b"a cat"))
        self.assertEqual(flow.response.body, b"a cat")

    def test_latin1(self):
        """A charset=iso-8859-1 body is decoded and encoded back in Latin-1."""
        response = makeResponse(200, [("Content-Type", 'text/plain; charset="ISO-8859-1"')], "café crème".encode("latin-1"))
        _, flow = self.respond({"pattern": "crème", "replacement": "brûlée"}, response)
        self.assertEqual(flow.response.body, "café brûlée".encode("latin-1"))

    def test_badUTF8Untouched(self):
        """A body that is not valid in its charset (UTF-8 by default) passes as it came."""
        body = b"cat \xff\xfe"
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"},
                               makeResponse(200, [("Content-Type", "application/json")], body))
        self.assertEqual(flow.response.body, body)

    def test_unknownCharsetUntouched(self):
        """A charset Python does not know leaves the body alone."""
        response = makeResponse(200, [("Content-Type", "text/plain; charset=x-klingon")], b"cat")
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, response)
        self.assertEqual(flow.response.body, b"cat")

    def test_escapingCodecUntouched(self):
        """A 'charset' that would rewrite unmatched text on the way back (unicode_escape) leaves the body alone."""
        response = makeResponse(200, [("Content-Type", "text/plain; charset=unicode_escape")], b"cat \\x41")
        _, flow = self.respond({"pattern": "cat", "replacement": "dog"}, response)
        self.assertEqual(flow.response.body, b"cat \\x41")

    def test_unencodableReplacementUntouched(self):
        """A replacement the body's charset cannot hold leaves the body alone, with a warning."""
        response = makeResponse(200, [("Content-Type", "text/plain; charset=iso-8859-1")], b"price: 5 EUR")
        _, flow = self.respond({"pattern": "EUR", "replacement": "\u20ac"}, response)
        self.assertEqual(flow.response.body, b"price: 5 EUR")
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in self.log if "reason" in e))

    def test_integrityHeadersDropped(self):
        """Content-MD5 and Digest go when the body changes, and stay when it does not."""
        settings = {"pattern": "cat", "replacement": "dog"}
        _, flow = self.respond(settings, _html(b"cat", Content_MD5="x", Digest="sha-256=y", ETag='"1"'))
        self.assertFalse(flow.response.headers.hasHeader(b"content-md5"))
        self.assertFalse(flow.response.headers.hasHeader(b"digest"))
        self.assertEqual(flow.response.headers.getRawHeaders(b"etag"), [b'"1"'])
        _, flow = self.respond(settings, _html(b"bird", Content_MD5="x"))
        self.assertTrue(flow.response.headers.hasHeader(b"content-md5"))

    def test_partialContentNotBuffered(self):
        """A 206 holds a byte range, where replaced text would not fit: not read."""
        rewriter = replace.makeRewriter({"pattern": "cat"})
        flow = makeFlow()
        flow.response = makeResponse(206, [("Content-Type", "text/plain")], None)
        self.assertIsNone(rewriter.responseHead(flow))

    def catAt(self, settings, url):
        """The body that C{cat} in an HTML page at C{url} becomes."""
        _, flow = self.respond(settings, _html(b"cat"), url=url)
        return flow.response.body

    def test_hostFilter(self):
        """host= limits the replacement to matching hosts."""
        settings = {"pattern": "cat", "replacement": "dog", "host": "*.example.org|example.com"}
        self.assertEqual(self.catAt(settings, b"http://www.example.org/"), b"dog")
        self.assertEqual(self.catAt(settings, b"http://example.net/"), b"cat")

    def test_urlFilter(self):
        """url= limits the replacement to matching URLs."""
        settings = {"pattern": "cat", "replacement": "dog", "url": "*://example.com/app/*"}
        self.assertEqual(self.catAt(settings, b"https://example.com/app/main.html"), b"dog")
        self.assertEqual(self.catAt(settings, b"https://example.com/other"), b"cat")

    def test_overBufferLimit(self):
        """A body larger than the buffer limit passes untouched, with proxyd's warning."""
        tester, flow = self.respond({"pattern": "cat", "replacement": "dog"}, _html(b"cat" * 10), maxBodyBuffer=10)
        self.assertEqual(flow.response.body, b"cat" * 10)
        self.assertEqual(len(tester.warnings), 1)
        self.assertIn("replace", tester.warnings[0])

    def test_severalReplacements(self):
        """Given twice, the replacements run in order, each on the previous one's result."""
        tester = PluginTester(
            replace.makeRewriter({"pattern": "cat", "replacement": "dog"}),
            replace.makeRewriter({"pattern": "dog", "replacement": "wolf"}),
        )
        flow = resultOf(tester.response(makeFlow(), _html(gzip.compress(b"cat"), Content_Encoding="gzip")))
        self.assertEqual(gzip.decompress(flow.response.body), b"wolf")

    def test_requestBodyNotTouchedByDefault(self):
        """With the default direction a request body goes upstream as sent."""
        tester = PluginTester(replace.makeRewriter({"pattern": "cat", "replacement": "dog"}))
        flow = makeFlow(b"POST", headers=[("Content-Type", "text/plain")], body=b"cat")
        flow = resultOf(tester.exchange(flow, _html(b"cat")))
        self.assertEqual(flow.request.body, b"cat")
        self.assertEqual(flow.response.body, b"dog")


class RequestTests(SynchronousTestCase):
    """Replacing in request bodies."""

    def test_postBody(self):
        """direction=request rewrites a POSTed form-free text body; the response stays."""
        tester = PluginTester(replace.makeRewriter({"pattern": "secret", "replacement": "xxx", "direction": "request"}))
        flow = makeFlow(b"POST", headers=[("Content-Type", "application/json")], body=b'{"pw": "secret"}')
        flow = resultOf(tester.exchange(flow, _html(b"secret")))
        self.assertEqual(flow.request.body, b'{"pw": "xxx"}')
        self.assertEqual(flow.response.body, b"secret")

    def test_gzipPostBody(self):
        """A gzip-coded request body is decoded, replaced and coded again."""
        tester = PluginTester(replace.makeRewriter({"pattern": "a", "replacement": "b", "direction": "request"}))
        headers = [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")]
        flow = resultOf(tester.request(makeFlow(b"POST", headers=headers, body=gzip.compress(b"aaa"))))
        self.assertEqual(gzip.decompress(flow.request.body), b"bbb")

    def test_bothDirections(self):
        """direction=both rewrites the request body and the response body."""
        tester = PluginTester(replace.makeRewriter({"pattern": "cat", "replacement": "dog", "direction": "both"}))
        flow = makeFlow(b"PUT", headers=[("Content-Type", "text/plain")], body=b"cat")
        flow = resultOf(tester.exchange(flow, _html(b"cat")))
        self.assertEqual(flow.request.body, b"dog")
        self.assertEqual(flow.response.body, b"dog")

    def test_binaryPostNotBuffered(self):
        """A request body of another type is not asked for."""
        rewriter = replace.makeRewriter({"pattern": "cat", "direction": "request"})
        flow = makeFlow(b"POST", headers=[("Content-Type", "application/octet-stream")], body=b"cat")
        self.assertIsNone(rewriter.requestHead(flow))
