"""
Tests for the C{har} plugin, L{proxyd_plugins.har}.
"""

import base64
import gzip
import json
import os
import re

from twisted.application.service import IService
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from proxyd.interfaces import IBodyFilter, IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.interfaces import RequestRewriter
from proxyd.message import Response
from proxyd.testing import PluginTester, makeFlow, makeResponse, resultOf
from proxyd_plugins import har as harModule
from proxyd_plugins.har import har

# 2026-11-23T21:40:00.250Z
NOW = 1795470000.25

ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _load(path):
    with open(path, "rb") as f:
        return json.load(f)


def _entries(path):
    return _load(path)["log"]["entries"]


def _pairs(items):
    return [(item["name"], item["value"]) for item in items]


class _Answer(RequestRewriter):
    """A plugin that answers every request itself."""

    def requestHead(self, flow):
        return Response.text(403, "blocked\n", headers={b"X-Blocked": b"yes"})


class _BrokenStream:
    """A file that fails every write, as a full disk does."""

    def __init__(self):
        self.closed = False

    def seek(self, offset):
        pass

    def write(self, data):
        raise OSError(28, "No space left on device")

    def truncate(self):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass

    def close(self):
        self.closed = True


class HarTestMixin:
    def recorder(self, **settings):
        """A started recorder for C{settings} (file defaults to a new temp path), and its path."""
        settings.setdefault("file", self.mktemp())
        rewriter = har.makeRewriter(settings)
        rewriter.startService()
        self.addCleanup(lambda: rewriter.running and rewriter.stopService())
        return rewriter, settings["file"]

    def tester(self, *rewriters, **kwargs):
        """A PluginTester whose clock also times the recorders."""
        tester = PluginTester(*rewriters, **kwargs)
        for rewriter in rewriters:
            if isinstance(rewriter, harModule.HarRecorder):
                rewriter.clock = tester.clock
        return tester

    def exchange(self, tester, flow=None, response=None):
        if flow is None:
            flow = makeFlow()
        flow.started = NOW
        if response is None:
            response = makeResponse(200, {"Content-Type": "text/plain"}, b"hello\n")
        return resultOf(tester.exchange(flow, response))


class InterfaceTests(HarTestMixin, SynchronousTestCase):
    def test_pluginProvidesInterfaces(self):
        """The plugin object is what getPlugins and --plugin look for."""
        self.assertTrue(verifyObject(IPlugin, har))
        self.assertTrue(verifyObject(IProxyPlugin, har))
        self.assertEqual(har.name, "har")

    def test_rewriterProvidesHooksAndService(self):
        """The rewriter has both head hooks, and is a service proxyd starts and stops."""
        rewriter, _ = self.recorder()
        self.assertTrue(verifyObject(IRequestRewriter, rewriter))
        self.assertTrue(verifyObject(IResponseRewriter, rewriter))
        self.assertTrue(verifyObject(IService, rewriter))

    def test_headHooksReturnObservingFilters(self):
        """Both head hooks answer with an IBodyFilter that keeps the length and passes chunks unchanged."""
        rewriter, _ = self.recorder()
        flow = makeFlow()
        requestFilter = rewriter.requestHead(flow)
        flow.response = makeResponse()
        responseFilter = rewriter.responseHead(flow)
        for bodyFilter in (requestFilter, responseFilter):
            self.assertTrue(verifyObject(IBodyFilter, bodyFilter))
            self.assertIs(bodyFilter.keepsLength, True)
            self.assertEqual(bodyFilter.filterChunk(b"abc"), b"abc")
            self.assertEqual(bodyFilter.filterEnd(), b"")


class FileTests(HarTestMixin, SynchronousTestCase):
    def test_startWritesEmptyHar(self):
        """Once started, the file is a HAR 1.2 log with no entries."""
        _, path = self.recorder()
        log = _load(path)["log"]
        self.assertEqual(log["version"], "1.2")
        self.assertEqual(log["creator"]["name"], "proxyd")
        self.assertIsInstance(log["creator"]["version"], str)
        self.assertEqual(log["pages"], [])
        self.assertEqual(log["entries"], [])

    def test_existingFileStartedAfresh(self):
        """A file already at the path is replaced by a fresh log, and that is logged."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a HAR at all")
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.recorder(file=path)
        self.assertEqual(_entries(path), [])
        self.assertTrue(any(path in e["log_format"].format(**e) for e in events if e["log_level"] == LogLevel.info))

    def test_validJsonAfterEveryEntryAndAfterStop(self):
        """Each entry leaves the file valid JSON with the entries so far; stopping leaves it valid and closed."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        for n in range(3):
            self.exchange(tester, makeFlow(url="http://example.com/{}".format(n)))
            self.assertEqual([e["request"]["url"] for e in _entries(path)],
                             ["http://example.com/{}".format(i) for i in range(n + 1)])
        self.assertIsNone(rewriter.stopService())
        self.assertFalse(rewriter.running)
        self.assertEqual(len(_entries(path)), 3)

    def test_flowsEndingAfterStopDropped(self):
        """A flow in flight when the service stops is not written; the file stays valid."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        self.exchange(tester)
        flow = makeFlow(url="http://example.com/late")
        resultOf(tester.request(flow))
        rewriter.stopService()
        resultOf(tester.response(flow, makeResponse(200, body=b"late")))
        self.assertEqual(flow.response.body, b"late")
        self.assertEqual(len(_entries(path)), 1)

    def test_flowWithoutResponseWritesNothing(self):
        """A request whose response never comes leaves no entry."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        resultOf(tester.request(makeFlow(method="POST", body=b"data")))
        self.assertEqual(_entries(path), [])

    def test_writeFailureLoggedOnceAndTrafficUnharmed(self):
        """A failing disk is logged once; the responses still pass through unchanged."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        broken = _BrokenStream()
        real, rewriter._file = rewriter._file, broken
        self.addCleanup(real.close)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(2):
            flow = self.exchange(tester, response=makeResponse(200, body=b"payload"))
            self.assertEqual(flow.response.body, b"payload")
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("No space left", errors[0]["error"])


class EntryTests(HarTestMixin, SynchronousTestCase):
    def test_entriesInOrderWithRequiredFields(self):
        """Every entry has the HAR 1.2 required fields of entry, request, response, content and timings, typed."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        flows = [self.exchange(tester, makeFlow(url="http://example.com/{}".format(n), client="10.0.0.{}".format(n)))
                 for n in range(2)]
        entries = _entries(path)
        self.assertEqual([e["request"]["url"] for e in entries], ["http://example.com/0", "http://example.com/1"])
        for flow, entry in zip(flows, entries):
            for key, kind in [("startedDateTime", str), ("time", (int, float)), ("request", dict),
                              ("response", dict), ("cache", dict), ("timings", dict)]:
                self.assertIsInstance(entry[key], kind, key)
            self.assertRegex(entry["startedDateTime"], ISO_8601)
            self.assertEqual(entry["startedDateTime"], "2026-11-23T21:40:00.250Z")
            request = entry["request"]
            for key, kind in [("method", str), ("url", str), ("httpVersion", str), ("cookies", list),
                              ("headers", list), ("queryString", list), ("headersSize", int), ("bodySize", int)]:
                self.assertIsInstance(request[key], kind, key)
            self.assertEqual((request["method"], request["httpVersion"], request["headersSize"]),
                             ("GET", "HTTP/1.1", -1))
            response = entry["response"]
            for key, kind in [("status", int), ("statusText", str), ("httpVersion", str), ("cookies", list),
                              ("headers", list), ("content", dict), ("redirectURL", str),
                              ("headersSize", int), ("bodySize", int)]:
                self.assertIsInstance(response[key], kind, key)
            self.assertEqual((response["status"], response["statusText"], response["redirectURL"]),
                             (200, "OK", ""))
            content = response["content"]
            self.assertEqual((content["size"], content["mimeType"], content["text"]), (6, "text/plain", "hello\n"))
            self.assertNotIn("encoding", content)
            self.assertEqual(response["bodySize"], 6)
            self.assertIn(("Content-Type", "text/plain"), _pairs(response["headers"]))
            for key in ("send", "wait", "receive"):
                self.assertIsInstance(entry["timings"][key], (int, float))
                self.assertGreaterEqual(entry["timings"][key], 0)
            for key in ("blocked", "dns", "connect", "ssl"):
                self.assertEqual(entry["timings"][key], -1)
            self.assertEqual(entry["_proxyd"], {"flow": flow.id, "client": flow.client, "mode": "forward"})

    def test_timingsFromTheClock(self):
        """send, wait and receive are the clock's milliseconds between the hooks; time is their sum."""
        rewriter, path = self.recorder()
        rewriter.clock = clock = PluginTester().clock
        flow = makeFlow(method="POST")
        requestFilter = rewriter.requestHead(flow)
        clock.advance(0.010)
        requestFilter.filterChunk(b"x")
        requestFilter.filterEnd()
        clock.advance(0.200)
        flow.response = makeResponse()
        responseFilter = rewriter.responseHead(flow)
        clock.advance(0.030)
        responseFilter.filterChunk(b"y")
        responseFilter.filterEnd()
        [entry] = _entries(path)
        timings = entry["timings"]
        self.assertAlmostEqual(timings["send"], 10, places=3)
        self.assertAlmostEqual(timings["wait"], 200, places=3)
        self.assertAlmostEqual(timings["receive"], 30, places=3)
        self.assertAlmostEqual(entry["time"], 240, places=3)

    def test_requestBodyRecordedAsPostData(self):
        """A form body is recorded as postData text and params, and still sent upstream unchanged."""
        rewriter, path = self.recorder()
        tester = self.tester(rewriter)
        body = b"name=J%C3%B6rg&empty=&x=1+2"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        flow = self.exchange(tester, makeFlow(method="POST", headers=headers, body=body))
        self.assertEqual(flow.request.body, body)
        [entry] = _entries(path)
        request = entry["request"]
        self.assertEqual(request["bodySize"], len(body))
        self.assertEqual(request["postData"]["mimeType"], "application/x-www-form-urlencoded")
        self.assertEqual(request["postData"]["text"], body.decode())
        self.assertEqual(_pairs(request["postData"]["params"]), [("name", "J\u00f6rg"), ("empty", ""), ("x", "1 2")])

    def test_requestWithoutBodyHasNoPostData(self):
        """A GET has no postData and a bodySize of 0."""
        rewriter, path = self.recorder()
        self.exchange(self.tester(rewriter))
        [entry] = _entries(path)
        self.assertNotIn("postData", entry["request"])
        self.assertEqual(entry["request"]["bodySize"], 0)

    def test_queryStringCookiesAndRedirect(self):
        """The query is parsed and percent-decoded; Cookie and Set-Cookie become cookies; Location is redirectURL."""
        rewriter, path = self.recorder()
        flow = makeFlow(url="http://example.com/p?a=1&b=%20x&c=&a=2", headers={"Cookie": "sid=abc; theme=dark"})
        response = makeResponse(
            302,
            [("Location", "http://example.com/next"),
             ("Set-Cookie", "sid=new; Path=/; Domain=example.com; HttpOnly; Secure; "
                            "Expires=Wed, 21 Oct 2026 07:28:00 GMT"),
             ("Set-Cookie", "plain=1")],
            b"",
        )
        self.exchange(self.tester(rewriter), flow, response)
        [entry] = _entries(path)
        self.assertEqual(_pairs(entry["request"]["queryString"]), [("a", "1"), ("b", " x"), ("c", ""), ("a", "2")])
        self.assertEqual(_pairs(entry["request"]["cookies"]), [("sid", "abc"), ("theme", "dark")])
        self.assertEqual(entry["response"]["cookies"], [
            {"name": "sid", "value": "new", "path": "/", "domain": "example.com", "httpOnly": True, "secure": True,
             "expires": "2026-10-21T07:28:00.000Z"},
            {"name": "plain", "value": "1"},
        ])
        self.assertEqual(entry["response"]["redirectURL"], "http://example.com/next")
        self.assertEqual(entry["response"]["statusText"], "Found")

    def test_madeResponseRecorded(self):
        """A response another plugin answered with is recorded, with its body."""
        rewriter, path = self.recorder()
        tester = self.tester(_Answer(), rewriter)
        flow = self.exchange(tester, makeFlow(url="http://blocked.test/"))
        self.assertEqual(flow.response.status, 403)
        [entry] = _entries(path)
        self.assertEqual(entry["request"]["url"], "http://blocked.test/")
        self.assertEqual(entry["response"]["status"], 403)
        self.assertEqual(entry["response"]["content"]["text"], "blocked\n")
        self.assertIn(("X-Blocked", "yes"), _pairs(entry["response"]["headers"]))

    def test_hostFilter(self):
        """With host=, only flows to matching hosts are recorded."""
        rewriter, path = self.recorder(host="example.com|*.example.org")
        tester = self.tester(rewriter)
        for url in ("http://example.com/", "http://other.test/", "http://www.example.org/x", "http://example.net/"):
            flow = self.exchange(tester, makeFlow(url=url))
            self.assertEqual(flow.response.body, b"hello\n")
        self.assertEqual([e["request"]["url"] for e in _entries(path)],
                         ["http://example.com/", "http://www.example.org/x"])

    def test_twoRecordersKeepSeparateState(self):
        """Two har plugins in one chain each record every flow to their own file."""
        first, firstPath = self.recorder()
        second, secondPath = self.recorder()
        tester = self.tester(first, second)
        self.exchange(tester, makeFlow(method="POST", body=b"abc"), makeResponse(200, body=b"defg"))
        for path in (firstPath, secondPath):
            [entry] = _entries(path)
            self.assertEqual(entry["request"]["postData"]["text"], "abc")
            self.assertEqual(entry["response"]["content"]["text"], "defg")


class BodyTests(HarTestMixin, SynchronousTestCase):
    def test_bodyTruncatedAtMaxBody(self):
        """A body longer than max-body is recorded up to it, with the full size and a comment; it passes whole."""
        rewriter, path = self.recorder(**{"max-body": "10"})
        tester = self.tester(rewriter, chunkSize=3)
        body = b"0123456789" * 10
        flow = self.exchange(tester, makeFlow(method="PUT", body=body[::-1]), makeResponse(200, body=body))
        self.assertEqual(flow.response.body, body)
        self.assertEqual(flow.request.body, body[::-1])
        [entry] = _entries(path)
        content = entry["response"]["content"]
        self.assertEqual(content["text"], "0123456789")
        self.assertEqual(content["size"], 100)
        self.assertIn("truncated", content["comment"])
        self.assertEqual(entry["response"]["bodySize"], 100)
        self.assertEqual(entry["request"]["postData"]["text"], "9876543210")
        self.assertEqual(entry["request"]["bodySize"], 100)

    def test_maxBodyUnits(self):
        """max-body takes sizes with units like 1k."""
        rewriter, path = self.recorder(**{"max-body": "1k"})
        self.exchange(self.tester(rewriter), response=makeResponse(200, body=b"a" * 2000))
        [entry] = _entries(path)
        self.assertEqual(len(entry["response"]["content"]["text"]), 1024)

    def test_defaultMaxBodyIs64k(self):
        """Without max-body, 64 KiB of each body is recorded."""
        rewriter, path = self.recorder()
        body = b"b" * (64 * 1024 + 1)
        flow = self.exchange(self.tester(rewriter), response=makeResponse(200, body=body))
        self.assertEqual(flow.response.body, body)
        [entry] = _entries(path)
        self.assertEqual(len(entry["response"]["content"]["text"]), 64 * 1024)
        self.assertEqual(entry["response"]["content"]["size"], len(body))

    def test_maxBodyZeroRecordsNoBodies(self):
        """max-body=0 records sizes but no body text."""
        rewriter, path = self.recorder(**{"max-body": "0"})
        flow = self.exchange(self.tester(rewriter), makeFlow(method="POST", body=b"secret"),
                             makeResponse(200, body=b"private"))
        self.assertEqual(flow.response.body, b"private")
        [entry] = _entries(path)
        content = entry["response"]["content"]
        self.assertNotIn("text", content)
        self.assertEqual(content["size"], 7)
        self.assertEqual(entry["request"]["bodySize"], 6)
        self.assertEqual(entry["request"]["postData"]["text"], "")
        self.assertNotIn("secret", open(path).read())

    def test_binaryBodyBase64(self):
        """A body that is not text is recorded base64-encoded, with encoding set."""
        rewriter, path = self.recorder()
        body = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
        response = makeResponse(200, {"Content-Type": "image/png"}, body)
        flow = self.exchange(self.tester(rewriter, chunkSize=1), response=response)
        self.assertEqual(flow.response.body, body)
        [entry] = _entries(path)
        content = entry["response"]["content"]
        self.assertEqual(content["encoding"], "base64")
        self.assertEqual(base64.b64decode(content["text"]), body)
        self.assertEqual(content["mimeType"], "image/png")

    def test_binaryRequestBodyBase64(self):
        """A binary request body is base64 text, marked in a custom field and a comment."""
        rewriter, path = self.recorder()
        body = bytes(range(256))
        self.exchange(self.tester(rewriter), makeFlow(method="POST", body=body))
        [entry] = _entries(path)
        postData = entry["request"]["postData"]
        self.assertEqual(base64.b64decode(postData["text"]), body)
        self.assertEqual(postData["_encoding"], "base64")
        self.assertIn("base64", postData["comment"])

    def test_truncatedTextNotCutMidCharacter(self):
        """A UTF-8 body cut inside a character is recorded as text up to the last whole one."""
        rewriter, path = self.recorder(**{"max-body": "5"})
        response = makeResponse(200, {"Content-Type": "text/plain; charset=utf-8"}, "\u00e9" * 10)
        self.exchange(self.tester(rewriter), response=response)
        [entry] = _entries(path)
        self.assertEqual(entry["response"]["content"]["text"], "\u00e9\u00e9")

    def test_charsetFromContentType(self):
        """A body in the charset its Content-Type names is recorded as text."""
        rewriter, path = self.recorder()
        response = makeResponse(200, {"Content-Type": "text/html; charset=iso-8859-1"}, b"caf\xe9")
        self.exchange(self.tester(rewriter), response=response)
        [entry] = _entries(path)
        self.assertEqual(entry["response"]["content"]["text"], "caf\u00e9")

    def test_gzipBodyRecordedDecoded(self):
        """A gzip-coded body is recorded decoded, with its decoded size and the compression; it passes coded."""
        rewriter, path = self.recorder()
        text = b"hello, world\n" * 100
        coded = gzip.compress(text)
        flow = self.exchange(self.tester(rewriter), response=makeResponse(
            200, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, coded))
        self.assertEqual(flow.response.body, coded)
        [entry] = _entries(path)
        content = entry["response"]["content"]
        self.assertEqual(content["text"], text.decode())
        self.assertEqual(content["size"], len(text))
        self.assertEqual(content["compression"], len(text) - len(coded))
        self.assertEqual(entry["response"]["bodySize"], len(coded))

    def test_gzipBodyLargerThanMaxBodyKeptCoded(self):
        """A gzip body that decodes to more than max-body is recorded as sent, base64, with a comment."""
        rewriter, path = self.recorder(**{"max-body": "1k"})
        coded = gzip.compress(b"\x00" * 100000)
        self.exchange(self.tester(rewriter), response=makeResponse(200, {"Content-Encoding": "gzip"}, coded))
        [entry] = _entries(path)
        content = entry["response"]["content"]
        self.assertEqual(content["size"], len(coded))
        self.assertEqual(base64.b64decode(content["text"]), coded)
        self.assertIn("gzip", content["comment"])


class SettingsTests(HarTestMixin, SynchronousTestCase):
    def assertRefused(self, settings, key):
        with self.assertRaises(PluginSettingsError) as caught:
            har.makeRewriter(settings)
        self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))
        return str(caught.exception)

    def test_missingFileRefused(self):
        """file is required."""
        self.assertRefused({}, "file")
        self.assertRefused({"file": ""}, "file")

    def test_missingDirectoryRefused(self):
        """A file in a directory that does not exist is refused."""
        message = self.assertRefused({"file": os.path.join(self.mktemp(), "flows.har")}, "file")
        self.assertIn("does not exist", message)

    def test_directoryRefused(self):
        """A path that is a directory is refused."""
        path = self.mktemp()
        os.mkdir(path)
        self.assertRefused({"file": path}, "file")

    def test_unwritableDirectoryRefused(self):
        """A directory the process may not create files in is refused."""
        self.patch(harModule.os, "access", lambda path, mode: False)
        self.assertRefused({"file": self.mktemp()}, "file")

    def test_unwritableFileRefused(self):
        """An existing file the process may not write is refused."""
        path = self.mktemp()
        open(path, "w").close()
        self.patch(harModule.os, "access", lambda p, mode: p != os.path.abspath(path))
        self.assertIn("not writable", self.assertRefused({"file": path}, "file"))

    def test_readOnlyDirectoryRefused(self):
        """A real read-only directory is refused (not checkable as root)."""
        if os.geteuid() == 0:
            raise self.skipTest("root may write anywhere")
        directory = self.mktemp()
        os.mkdir(directory, 0o500)
        self.addCleanup(os.chmod, directory, 0o700)
        self.assertRefused({"file": os.path.join(directory, "flows.har")}, "file")

    def test_checkLeavesNoFile(self):
        """Building the rewriter checks the path but creates nothing; starting it does."""
        path = self.mktemp()
        rewriter = har.makeRewriter({"file": path})
        self.assertFalse(os.path.exists(path))
        rewriter.startService()
        self.addCleanup(rewriter.stopService)
        self.assertEqual(_entries(path), [])

    def test_badMaxBodyRefused(self):
        """max-body must be a size."""
        self.assertRefused({"file": self.mktemp(), "max-body": "lots"}, "max-body")
        self.assertRefused({"file": self.mktemp(), "max-body": "-1"}, "max-body")

    def test_badHostRefused(self):
        """host must be host globs."""
        self.assertRefused({"file": self.mktemp(), "host": "http://example.com/"}, "host")

    def test_unknownKeyRefused(self):
        """An unknown key is refused, naming it."""
        self.assertRefused({"file": self.mktemp(), "path": "x"}, "path")
