"""
Tests for L{proxyd.h1}: the sans-I/O HTTP/1.1 readers and head helpers.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from proxyd import h1
from proxyd.h1 import (
    BODY,
    CHUNKED,
    END,
    ERROR,
    HEAD,
    INFO,
    LENGTH,
    NO_BODY,
    RAW,
    UNTIL_CLOSE,
    UPGRADE,
    ProtocolError,
    RequestReader,
    ResponseReader,
)

# Bounded so the whole file runs in a few seconds.
_PROPERTY = settings(max_examples=200, deadline=None)
_STRUCTURED = settings(max_examples=100, deadline=None)


class RecordingSink:
    """
    Records every C{messageEvent}.  With C{pauseOn}, pauses the reader right
    after an event of that kind has been recorded.
    """

    def __init__(self, pauseOn=None):
        self.events = []
        self.reader = None
        self.pauseOn = pauseOn

    def messageEvent(self, kind, value):
        self.events.append((kind, value))
        if self.pauseOn is not None and kind == self.pauseOn:
            self.reader.pause()

    def kinds(self):
        return [kind for kind, _ in self.events]

    def errors(self):
        return [value for kind, value in self.events if kind == ERROR]

    def body(self):
        return b"".join(value for kind, value in self.events if kind == BODY)

    def heads(self):
        return [value for kind, value in self.events if kind == HEAD]


def requestReader(maxHeadSize=65536, pauseOn=None):
    sink = RecordingSink(pauseOn)
    reader = RequestReader(sink, maxHeadSize)
    sink.reader = reader
    return reader, sink


def responseReader(maxHeadSize=65536, bodyless=False, pauseOn=None):
    sink = RecordingSink(pauseOn)
    reader = ResponseReader(sink, maxHeadSize)
    sink.reader = reader
    reader.expect(bodyless)
    return reader, sink


def feedRequest(*chunks, **kw):
    reader, sink = requestReader(**kw)
    for chunk in chunks:
        reader.feed(chunk)
    return reader, sink


def feedResponse(*chunks, **kw):
    reader, sink = responseReader(**kw)
    for chunk in chunks:
        reader.feed(chunk)
    return reader, sink


def bytewise(data):
    return [data[i : i + 1] for i in range(len(data))]


def summary(events):
    """
    Events as comparable tuples, consecutive BODY events merged, RAW merged
    into the preceding UPGRADE.
    """
    out = []
    for kind, value in events:
        if kind == HEAD or kind == INFO:
            if isinstance(value, h1.RequestHead):
                item = (kind, value.method, value.target, value.version, tuple(value.headers),
                        value.framing, value.length, value.keepAlive, value.expectContinue)
            else:
                item = (kind, value.status, value.reason, value.version, tuple(value.headers),
                        value.framing, value.length, value.keepAlive)
            out.append(item)
        elif kind == BODY:
            if out and out[-1][0] == BODY:
                out[-1] = (BODY, out[-1][1] + value)
            elif value:
                out.append((BODY, value))
        elif kind == RAW:
            if out and out[-1][0] in (UPGRADE, RAW):
                out[-1] = (out[-1][0], out[-1][1] + value)
            else:
                out.append((RAW, value))
        elif kind == ERROR:
            out.append((ERROR, value.status))
        else:
            out.append((kind, value))
    return out


GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
POST = (
    b"POST http://example.com/form HTTP/1.1\r\nHost: example.com\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)
CHUNKED_POST = (
    b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6;flag\r\n world\r\n0\r\n\r\n"
)
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


class ProtocolErrorTests(SynchronousTestCase):
    """L{ProtocolError} carries a status and a one-line reason."""

    def test_attributes(self):
        """The status and reason are attributes; str() is the reason."""
        e = ProtocolError(400, "bad thing")
        self.assertEqual((e.status, e.reason, str(e)), (400, "bad thing", "bad thing"))


class RequestReaderGoodTests(SynchronousTestCase):
    """Acceptable requests come out as HEAD, BODY..., END."""

    def test_get(self):
        """A GET gives HEAD then END with method, target, version and headers in wire order."""
        reader, sink = feedRequest(GET)
        self.assertEqual(sink.kinds(), [HEAD, END])
        head = sink.heads()[0]
        self.assertEqual(head.method, b"GET")
        self.assertEqual(head.target, b"http://example.com/")
        self.assertEqual(head.version, b"1.1")
        self.assertEqual(head.headers, [(b"Host", b"example.com")])
        self.assertEqual(head.framing, NO_BODY)
        self.assertEqual(head.length, 0)
        self.assertTrue(head.keepAlive)
        self.assertFalse(head.expectContinue)

    def test_headersKeepOrderAndCase(self):
        """Repeated headers keep their order and the case the client used."""
        reader, sink = feedRequest(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-b: 2\r\nX-A: 3\r\n\r\n"
        )
        self.assertEqual(
            sink.heads()[0].headers,
            [(b"Host", b"a"), (b"X-A", b"1"), (b"x-b", b"2"), (b"X-A", b"3")],
        )

    def test_postWithContentLength(self):
        """A POST with Content-Length gives HEAD (LENGTH, length), the body, END."""
        reader, sink = feedRequest(POST)
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])
        head = sink.heads()[0]
        self.assertEqual((head.framing, head.length), (LENGTH, 5))
        self.assertEqual(sink.body(), b"hello")

    def test_contentLengthZero(self):
        """Content-Length: 0 means no body at all."""
        reader, sink = feedRequest(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertEqual(sink.heads()[0].framing, NO_BODY)

    def test_bodyInPieces(self):
        """A Content-Length body that arrives over several feeds gives several BODY events, then END."""
        reader, sink = feedRequest(POST[:-5], b"he", b"ll", b"o")
        self.assertEqual(sink.kinds(), [HEAD, BODY, BODY, BODY, END])
        self.assertEqual(sink.body(), b"hello")

    def test_chunkedWithExtensions(self):
        """Chunk extensions are ignored; the chunk data comes out decoded."""
        reader, sink = feedRequest(CHUNKED_POST)
        self.assertEqual(sink.kinds()[0], HEAD)
        self.assertEqual(sink.kinds()[-1], END)
        self.assertEqual(sink.heads()[0].framing, CHUNKED)
        self.assertEqual(sink.body(), b"hello world")
        self.assertEqual(sink.errors(), [])

    def test_chunkedTransferEncodingCaseInsensitive(self):
        """Transfer-Encoding: Chunked is chunked."""
        reader, sink = feedRequest(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.heads()[0].framing, CHUNKED)
        self.assertEqual(sink.body(), b"abc")
        self.assertEqual(sink.kinds()[-1], END)

    def test_requestTrailersDropped(self):
        """Trailer fields after the last chunk are not added to the head's headers."""
        reader, sink = feedRequest(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])
        self.assertNotIn(b"X-Trailer", [n for n, v in sink.heads()[0].headers])

    def test_pipelinedWithoutPause(self):
        """Two requests in one feed give both requests' events, in order."""
        reader, sink = feedRequest(GET + POST)
        self.assertEqual(sink.kinds(), [HEAD, END, HEAD, BODY, END])
        self.assertEqual([h.method for h in sink.heads()], [b"GET", b"POST"])

    def test_pipelinedWaitsForResume(self):
        """
        Paused after the first request's END, the second request's events
        are held back until resume(), even if more bytes arrive meanwhile.
        """
        reader, sink = requestReader(pauseOn=END)
        reader.feed(GET + POST[:20])
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertTrue(reader.paused)
        reader.feed(POST[20:])
        self.assertEqual(sink.kinds(), [HEAD, END])
        sink.pauseOn = None
        reader.resume()
        self.assertEqual(sink.kinds(), [HEAD, END, HEAD, BODY, END])
        self.assertEqual(sink.heads()[1].method, b"POST")
        self.assertEqual(sink.body(), b"hello")

    def test_queuedBytesCountsHeldBody(self):
        """While paused, queuedBytes counts the BODY bytes held back; they are released on resume()."""
        reader, sink = requestReader()
        reader.pause()
        reader.feed(POST)
        self.assertEqual(sink.events, [])
        self.assertEqual(reader.queuedBytes, 5)
        reader.resume()
        self.assertEqual(reader.queuedBytes, 0)
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])

    def test_pauseInsideEventStopsDispatch(self):
        """Pausing from inside messageEvent stops delivery right after that event."""
        reader, sink = requestReader(pauseOn=HEAD)
        reader.feed(POST)
        self.assertEqual(sink.kinds(), [HEAD])
        sink.pauseOn = None
        reader.resume()
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])

    def test_connectUpgrade(self):
        """CONNECT gives HEAD, END, then UPGRADE with the bytes that followed the head."""
        reader, sink = feedRequest(CONNECT + b"\x16\x03\x01early")
        self.assertEqual(sink.kinds(), [HEAD, END, UPGRADE])
        head = sink.heads()[0]
        self.assertEqual((head.method, head.target), (b"CONNECT", b"example.com:443"))
        self.assertEqual(sink.events[-1][1], b"\x16\x03\x01early")

    def test_connectUpgradeNothingAfter(self):
        """A CONNECT head alone gives an UPGRADE with no bytes."""
        reader, sink = feedRequest(CONNECT)
        self.assertEqual(sink.events[-1], (UPGRADE, b""))

    def test_connectThenRaw(self):
        """After the UPGRADE every feed comes out unparsed as RAW, even if it looks like HTTP."""
        reader, sink = feedRequest(CONNECT, b"GET / HTTP/1.1\r\n\r\n", b"\x00\xff")
        self.assertEqual(sink.kinds(), [HEAD, END, UPGRADE, RAW, RAW])
        self.assertEqual(sink.events[3][1], b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(sink.events[4][1], b"\x00\xff")

    def test_rawHeldWhilePaused(self):
        """RAW bytes are queued while paused and counted in queuedBytes."""
        reader, sink = feedRequest(CONNECT)
        reader.pause()
        reader.feed(b"abc")
        self.assertEqual(reader.queuedBytes, 3)
        self.assertEqual(sink.kinds(), [HEAD, END, UPGRADE])
        reader.resume()
        self.assertEqual(sink.events[-1], (RAW, b"abc"))
        self.assertEqual(reader.queuedBytes, 0)

    def test_connectSplitHead(self):
        """A CONNECT head split over feeds still gives the bytes after it."""
        reader, sink = feedRequest(CONNECT[:10], CONNECT[10:] + b"early")
        self.assertEqual(sink.kinds(), [HEAD, END, UPGRADE])
        self.assertEqual(sink.events[-1][1], b"early")

    def test_websocketUpgradeRequest(self):
        """A GET with Connection: upgrade and Upgrade gives UPGRADE with the bytes after the head."""
        reader, sink = feedRequest(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframe"
        )
        self.assertEqual(sink.kinds(), [HEAD, END, UPGRADE])
        self.assertEqual(sink.events[-1][1], b"frame")

    def test_upgradeRequestBodyIsNotUpgradeData(self):
        """
        An Upgrade request that declares a body: the body comes out as BODY
        before END, not inside the UPGRADE bytes, so the events agree with
        the head's framing.
        """
        reader, sink = feedRequest(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: 3\r\n\r\nabcXYZ"
        )
        if sink.errors():
            # proxyd refuses such a request outright (400), before its head.
            self.assertEqual(sink.errors()[0].status, 400)
            return
        head = sink.heads()[0]
        self.assertEqual((head.framing, head.length), (LENGTH, 3))
        self.assertEqual(sink.body(), b"abc")
        self.assertEqual(sink.events[-1], (UPGRADE, b"XYZ"))

    def test_expectContinue(self):
        """Expect: 100-continue (any case) sets expectContinue on HTTP/1.1."""
        reader, sink = feedRequest(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
        )
        self.assertTrue(sink.heads()[0].expectContinue)
        self.assertEqual(sink.kinds(), [HEAD])

    def test_expectContinueIgnoredForHTTP10(self):
        """HTTP/1.0 clients do not know 100 Continue: expectContinue stays False."""
        reader, sink = feedRequest(
            b"POST / HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertFalse(sink.heads()[0].expectContinue)

    def test_otherExpectation(self):
        """An Expect value other than 100-continue does not set expectContinue."""
        reader, sink = feedRequest(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n")
        self.assertFalse(sink.heads()[0].expectContinue)

    def _keepAlive(self, version, connection):
        extra = b"Connection: " + connection + b"\r\n" if connection is not None else b""
        reader, sink = feedRequest(b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + extra + b"\r\n")
        self.assertEqual(sink.errors(), [])
        return sink.heads()[0].keepAlive

    def test_keepAliveHTTP11(self):
        """HTTP/1.1 is persistent unless a Connection header carries close."""
        self.assertTrue(self._keepAlive(b"1.1", None))
        self.assertTrue(self._keepAlive(b"1.1", b"keep-alive"))
        self.assertTrue(self._keepAlive(b"1.1", b"upgrade"))
        self.assertFalse(self._keepAlive(b"1.1", b"close"))
        self.assertFalse(self._keepAlive(b"1.1", b"Close"))
        self.assertFalse(self._keepAlive(b"1.1", b"foo, close"))
        self.assertFalse(self._keepAlive(b"1.1", b"keep-alive, close"))

    def test_keepAliveHTTP10(self):
        """HTTP/1.0 is persistent only with Connection: keep-alive (and no close)."""
        self.assertFalse(self._keepAlive(b"1.0", None))
        self.assertTrue(self._keepAlive(b"1.0", b"keep-alive"))
        self.assertTrue(self._keepAlive(b"1.0", b"Keep-Alive"))
        self.assertTrue(self._keepAlive(b"1.0", b"foo , keep-alive"))
        self.assertFalse(self._keepAlive(b"1.0", b"close"))
        self.assertFalse(self._keepAlive(b"1.0", b"keep-alive, close"))

    def test_keepAliveSeveralConnectionHeaders(self):
        """Connection tokens from several Connection headers all count."""
        reader, sink = feedRequest(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        )
        self.assertFalse(sink.heads()[0].keepAlive)

    def test_http10Version(self):
        """An HTTP/1.0 request reports version 1.0."""
        reader, sink = feedRequest(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(sink.heads()[0].version, b"1.0")
        self.assertEqual(sink.kinds(), [HEAD, END])

    def test_targetSplitOverFeeds(self):
        """A request target split across feeds is reassembled."""
        reader, sink = feedRequest(*bytewise(b"GET http://example.com/a/b?c=d HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertEqual(sink.heads()[0].target, b"http://example.com/a/b?c=d")

    def test_bytewiseEqualsWhole(self):
        """A chunked request fed one byte at a time gives the same message as fed whole."""
        whole = summary(feedRequest(CHUNKED_POST)[1].events)
        split = summary(feedRequest(*bytewise(CHUNKED_POST))[1].events)
        self.assertEqual(split, whole)

    def test_sinkExceptionPropagates(self):
        """
        An exception raised by the sink comes out of feed(), and the events
        not yet delivered are delivered by the next dispatch.
        """
        class Boom(Exception):
            pass

        events = []

        class ExplodingSink:
            def messageEvent(self, kind, value):
                events.append(kind)
                if kind == HEAD and len(events) == 1:
                    raise Boom()

        reader = RequestReader(ExplodingSink())
        self.assertRaises(Boom, reader.feed, POST)
        self.assertEqual(events, [HEAD])
        reader.dispatch()
        self.assertEqual(events, [HEAD, BODY, END])

    def test_emptyFeed(self):
        """Feeding no bytes emits nothing."""
        reader, sink = feedRequest(b"")
        self.assertEqual(sink.events, [])


class RequestSmugglingTests(SynchronousTestCase):
    """
    Every ambiguous framing gives one ERROR with status 400, and nothing
    after it.
    """

    def assertRejected(self, data, status=400):
        """Fed whole and byte by byte, C{data} ends in a single ERROR with C{status}."""
        for chunks in ([data], bytewise(data)):
            reader, sink = feedRequest(*chunks)
            kinds = sink.kinds()
            self.assertIn(ERROR, kinds, (chunks[:1], sink.events))
            error = sink.errors()[0]
            self.assertIsInstance(error, ProtocolError)
            self.assertEqual(error.status, status)
            self.assertTrue(error.reason)
            before, after = kinds[: kinds.index(ERROR)], kinds[kinds.index(ERROR) + 1 :]
            self.assertNotIn(END, before)
            # Nothing parsed after the ERROR.  (Later feeds coming out as RAW
            # is a separate bug: see test_errorStopsParsing.)
            self.assertEqual([k for k in after if k != RAW], [])
        return error

    def test_contentLengthAndTransferEncoding(self):
        """Content-Length with Transfer-Encoding, either order, is refused."""
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
        )

    def test_contentLengthAndNonChunkedTransferEncoding(self):
        """Content-Length with Transfer-Encoding: identity is refused."""
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc"
        )

    def test_twoDifferingContentLengths(self):
        """Two different Content-Lengths are refused."""
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")

    def test_twoEqualContentLengths(self):
        """Two Content-Lengths are refused even when equal (proxyd does not merge them)."""
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc")

    def test_contentLengthList(self):
        """A comma list in Content-Length is refused."""
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd")

    def test_badContentLength(self):
        """Signed, empty-ish or non-numeric Content-Length values are refused."""
        for value in (b"-1", b"+3", b"3x", b"0x10", b"1 2"):
            self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + value + b"\r\n\r\nabc")

    def test_contentLengthOverflow(self):
        """A Content-Length that does not fit 64 bits is refused."""
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n")

    def test_obsFold(self):
        """Obsolete line folding is refused."""
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n")

    def test_foldedTransferEncoding(self):
        """A folded Transfer-Encoding line is refused."""
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
        )

    def test_bareCR(self):
        """A bare CR in a header value, or as a line ending, is refused."""
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\rHost: a\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n")

    def test_nul(self):
        """A NUL in a header value, name or the request line is refused."""
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: ab\r\n\r\n")
        self.assertRejected(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_lfOnlyLineEndings(self):
        """Bare LF line endings, anywhere in the head, are refused."""
        self.assertRejected(b"GET / HTTP/1.1\nHost: a\n\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n")
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\n\n")

    def test_whitespaceBeforeColon(self):
        """Whitespace between a field name and its colon is refused."""
        self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n")

    def _chunked(self, body):
        return b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body

    def test_badChunkSize(self):
        """A chunk size that is not plain hex is refused."""
        for size in (b"zz", b"-3", b"0x3", b"3 ", b" 3", b""):
            self.assertRejected(self._chunked(size + b"\r\nabc\r\n0\r\n\r\n"))

    def test_chunkSizeOverflow(self):
        """A chunk size that overflows 64 bits is refused."""
        self.assertRejected(self._chunked(b"ffffffffffffffffff\r\nabc\r\n"))

    def test_chunkDataTooLong(self):
        """Chunk data longer than its size is refused."""
        self.assertRejected(self._chunked(b"3\r\nabcX\r\n0\r\n\r\n"))

    def test_chunkLfOnly(self):
        """Bare LF after a chunk size is refused."""
        self.assertRejected(self._chunked(b"3\nabc\n0\n\n"))

    def test_transferEncodingNotChunked(self):
        """Any Transfer-Encoding other than chunked alone is refused."""
        for te in (b"gzip", b"identity", b"gzip, chunked", b"chunked, chunked", b"xchunked", b"chunked, gzip"):
            self.assertRejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n")

    def test_twoTransferEncodings(self):
        """Two Transfer-Encoding headers are refused."""
        self.assertRejected(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )

    def test_transferEncodingInHTTP10(self):
        """Transfer-Encoding in an HTTP/1.0 request is refused."""
        err = self.assertRejected(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertIn("HTTP/1.0", err.reason)

    def test_twoHostHeaders(self):
        """Two Host headers are refused, whatever their case."""
        err = self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertIn("Host", err.reason)
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n")

    def test_garbage(self):
        """Bytes that are not HTTP are refused."""
        self.assertRejected(b"hello there\r\n\r\n")
        self.assertRejected(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")

    def test_http2Preface(self):
        """The HTTP/2 connection preface is refused with 400."""
        self.assertRejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

    def test_smugglingAfterGoodRequest(self):
        """A good request, then a smuggling attempt: the first is served, the second refused."""
        reader, sink = feedRequest(
            GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.kinds(), [HEAD, END, ERROR])
        self.assertEqual(sink.errors()[0].status, 400)

    def test_errorStopsParsing(self):
        """After an ERROR, later feeds produce no events at all."""
        reader, sink = feedRequest(b"garbage\r\n\r\n")
        self.assertEqual(sink.kinds(), [ERROR])
        reader.feed(GET)
        # Was a bug: once the ERROR has been dispatched, the next feed comes out
        # as a RAW event (the "done" check only looks at undispatched events).
        self.assertEqual(sink.kinds(), [ERROR])

    def test_errorWhilePausedStopsParsing(self):
        """While the ERROR is still queued, later feeds add nothing."""
        reader, sink = requestReader()
        reader.pause()
        reader.feed(b"garbage\r\n\r\n")
        reader.feed(GET)
        reader.resume()
        self.assertEqual(sink.kinds(), [ERROR])


class RequestHeadSizeTests(SynchronousTestCase):
    """The request head bound: 431 once the head outgrows maxHeadSize."""

    def makeHead(self, size):
        """A complete GET head of exactly C{size} bytes."""
        start = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: "
        head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
        assert len(head) == size
        return head

    def test_exactlyAtBound(self):
        """A head of exactly maxHeadSize bytes is accepted, whole or byte by byte."""
        head = self.makeHead(200)
        for chunks in ([head], bytewise(head)):
            reader, sink = feedRequest(*chunks, maxHeadSize=200)
            self.assertEqual(sink.kinds(), [HEAD, END])

    def test_oneOverBound(self):
        """A head one byte over maxHeadSize gives 431, whole or byte by byte."""
        head = self.makeHead(201)
        for chunks in ([head], bytewise(head)):
            reader, sink = feedRequest(*chunks, maxHeadSize=200)
            self.assertEqual(sink.kinds(), [ERROR])
            self.assertEqual(sink.errors()[0].status, 431)
            self.assertIn("200", sink.errors()[0].reason)

    def test_endlessHeadSplitOverFeeds(self):
        """A head that never ends, fed in small pieces, trips the bound once past it."""
        reader, sink = requestReader(maxHeadSize=1000)
        reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
        fed = 26
        while not sink.events and fed < 5000:
            reader.feed(b"X-Pad: " + b"a" * 40 + b"\r\n")
            fed += 49
        self.assertEqual(sink.kinds(), [ERROR])
        self.assertEqual(sink.errors()[0].status, 431)
        # A header is reported when the next one starts, so the bound trips
        # within one line after it is passed.
        self.assertLessEqual(fed, 1000 + 2 * 49)

    def test_endlessRequestLine(self):
        """An endless request target is bounded too."""
        reader, sink = feedRequest(b"GET /" + b"a" * 300, maxHeadSize=100)
        self.assertEqual(sink.errors()[0].status, 431)

    def test_headAndBodyInOneFeed(self):
        """A small head with a big body in the same feed does not trip the bound."""
        body = b"x" * 5000
        data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + body
        reader, sink = feedRequest(data, maxHeadSize=100)
        self.assertEqual(sink.errors(), [])
        self.assertEqual(sink.kinds()[0], HEAD)
        self.assertEqual(sink.kinds()[-1], END)
        self.assertEqual(sink.body(), body)

    def test_chunkedHeadAndBodyInOneFeed(self):
        """A small head with a big chunked body in the same feed does not trip the bound."""
        body = b"y" * 3000
        data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                + h1.chunk(body) + h1.LAST_CHUNK)
        reader, sink = feedRequest(data, maxHeadSize=100)
        self.assertEqual(sink.errors(), [])
        self.assertEqual(sink.body(), body)
        self.assertEqual(sink.kinds()[-1], END)

    def test_boundResetsPerRequest(self):
        """Each pipelined request gets the whole bound, fed separately."""
        head = self.makeHead(150)
        reader, sink = feedRequest(head, head, head, maxHeadSize=150)
        self.assertEqual(sink.kinds(), [HEAD, END] * 3)

    def test_pipelinedInOneFeedUnderBoundEach(self):
        """
        Several pipelined requests, each under the bound, arriving in one
        feed whose total is over it, are all accepted.
        """
        head = self.makeHead(60)
        reader, sink = feedRequest(head * 5, maxHeadSize=100)
        # Was a bug: gives HEAD, END x3 then ERROR 431: the raw-byte bound is
        # applied to the feed, and the head of a later request that straddles
        # the cut at maxHeadSize bytes is taken for an oversized head.
        self.assertEqual(sink.errors(), [])
        self.assertEqual(sink.kinds(), [HEAD, END] * 5)

    def test_headAfterBodyInSameFeedBounded(self):
        """
        A request head that follows a body in the same feed is still
        bounded by maxHeadSize.
        """
        body = b"b" * 100
        first = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + body
        second = self.makeHead(400)
        reader, sink = feedRequest(first + second, maxHeadSize=100)
        # Was a bug: the 400-byte second head is accepted (HEAD, END) although
        # maxHeadSize is 100: once the first head ended inside the feed, the
        # rest of the feed goes to llhttp unchecked, and headBytes is reset
        # at the END, so those bytes are never counted.
        self.assertEqual([h.method for h in sink.heads()], [b"POST"])
        self.assertEqual(sink.errors()[0].status, 431)

    def test_connectDataPastBoundNotLost(self):
        """
        Bytes after a CONNECT head are all delivered even when the feed
        carrying them is longer than maxHeadSize.
        """
        early = bytes(range(256)) * 2
        reader, sink = feedRequest(CONNECT + early, maxHeadSize=100)
        delivered = b"".join(v for k, v in sink.events if k in (UPGRADE, RAW))
        # Was a bug: only the bytes up to maxHeadSize are in the UPGRADE event; the
        # rest of the feed is dropped (_feedParser returns when _parse reports
        # the upgrade and never hands over the remainder).
        self.assertEqual(delivered, early)

    def test_connectDataPastBoundAfterSplitHead(self):
        """
        The CONNECT head arrives in two feeds and the second carries more
        than the remaining head room: no byte is lost.
        """
        early = b"z" * 100
        reader, sink = feedRequest(CONNECT[:-2], CONNECT[-2:] + early, maxHeadSize=100)
        delivered = b"".join(v for k, v in sink.events if k in (UPGRADE, RAW))
        # Was a bug: same data loss as test_connectDataPastBoundNotLost.
        self.assertEqual(delivered, early)


class CheckRequestHeadTests(SynchronousTestCase):
    """L{h1.checkRequestHead} on its own."""

    def check(self, headers, version=b"1.1"):
        head = h1.RequestHead(b"POST", b"/", version, headers)
        return h1.checkRequestHead(head), head

    def test_length(self):
        """A Content-Length sets LENGTH and the length."""
        error, head = self.check([(b"Content-Length", b"12")])
        self.assertIsNone(error)
        self.assertEqual((head.framing, head.length), (LENGTH, 12))

    def test_chunked(self):
        """Transfer-Encoding: chunked sets CHUNKED."""
        error, head = self.check([(b"Transfer-Encoding", b" chunked ")])
        self.assertIsNone(error)
        self.assertEqual(head.framing, CHUNKED)

    def test_reasons(self):
        """Each refusal comes with its reason."""
        cases = [
            ([(b"Content-Length", b"1"), (b"content-length", b"1")], "more than one Content-Length"),
            ([(b"Content-Length", b"x")], "bad Content-Length"),
            ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
             "more than one Transfer-Encoding"),
            ([(b"Host", b"a"), (b"HOST", b"b")], "more than one Host"),
            ([(b"Content-Length", b"1"), (b"Transfer-Encoding", b"chunked")],
             "both Content-Length and Transfer-Encoding"),
            ([(b"Transfer-Encoding", b"gzip")], "unsupported Transfer-Encoding"),
        ]
        for headers, reason in cases:
            self.assertEqual(self.check(headers)[0], reason)
        self.assertEqual(self.check([(b"Transfer-Encoding", b"chunked")], b"1.0")[0],
                         "Transfer-Encoding in an HTTP/1.0 request")


class ResponseReaderTests(SynchronousTestCase):
    """L{ResponseReader}: framing decisions, 1xx, 101, EOF and errors."""

    def test_contentLength(self):
        """A Content-Length response is LENGTH framed and keep-alive."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])
        head = sink.heads()[0]
        self.assertEqual((head.status, head.reason, head.version), (200, b"OK", b"1.1"))
        self.assertEqual((head.framing, head.length, head.keepAlive), (LENGTH, 5, True))
        self.assertEqual(sink.body(), b"hello")
        self.assertTrue(reader.connectionLost())

    def test_contentLengthZero(self):
        """Content-Length: 0 is NO_BODY and ends at once."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertEqual(sink.heads()[0].framing, NO_BODY)

    def test_chunked(self):
        """A chunked response is CHUNKED; the body comes decoded."""
        reader, sink = feedResponse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.heads()[0].framing, CHUNKED)
        self.assertEqual(sink.body(), b"hello")
        self.assertEqual(sink.kinds()[-1], END)

    def test_trailersDropped(self):
        """Trailer fields are dropped: they do not reach the head's headers, and END follows."""
        reader, sink = feedResponse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n"
        )
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])
        self.assertNotIn(b"X-Sum", [n for n, v in sink.heads()[0].headers])

    def test_untilClose(self):
        """Without Content-Length or chunked the body runs to EOF; connectionLost() ends it cleanly."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\n\r\nhello", b" world")
        head = sink.heads()[0]
        self.assertEqual(head.framing, UNTIL_CLOSE)
        self.assertFalse(head.keepAlive)
        self.assertEqual(sink.kinds(), [HEAD, BODY, BODY])
        self.assertTrue(reader.connectionLost())
        self.assertEqual(sink.kinds(), [HEAD, BODY, BODY, END])
        self.assertEqual(sink.body(), b"hello world")

    def test_connectionLostTwice(self):
        """A second connectionLost() after a close-delimited END adds no second END."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\n\r\nx")
        self.assertTrue(reader.connectionLost())
        self.assertTrue(reader.connectionLost())
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])

    def test_untilCloseWhilePaused(self):
        """The END made by connectionLost() waits for resume() like any event."""
        reader, sink = feedResponse(b"HTTP/1.0 200 OK\r\n\r\nhello")
        reader.pause()
        self.assertTrue(reader.connectionLost())
        self.assertEqual(sink.kinds(), [HEAD, BODY])
        reader.resume()
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])

    def test_nonChunkedTransferEncoding(self):
        """A Transfer-Encoding not ending in chunked is read until close, not kept alive."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz")
        head = sink.heads()[0]
        self.assertEqual(head.framing, UNTIL_CLOSE)
        self.assertFalse(head.keepAlive)
        self.assertTrue(reader.connectionLost())
        self.assertEqual(sink.body(), b"zzz")
        self.assertEqual(sink.kinds()[-1], END)

    def test_headResponseBodyless(self):
        """After expect(bodyless=True) a response with Content-Length has no body: HEAD, END."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", bodyless=True)
        self.assertEqual(sink.kinds(), [HEAD, END])
        head = sink.heads()[0]
        self.assertEqual(head.framing, NO_BODY)
        self.assertIn((b"Content-Length", b"1234"), head.headers)
        self.assertTrue(reader.connectionLost())

    def test_headResponseChunkedBodyless(self):
        """A HEAD response that says chunked has no body either."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", bodyless=True)
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertEqual(sink.heads()[0].framing, NO_BODY)

    def test_noContent(self):
        """204 has no body, even with a Content-Length."""
        reader, sink = feedResponse(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertEqual(sink.heads()[0].framing, NO_BODY)
        self.assertTrue(sink.heads()[0].keepAlive)

    def test_notModified(self):
        """304 has no body, even with a Content-Length."""
        reader, sink = feedResponse(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
        self.assertEqual(sink.kinds(), [HEAD, END])
        self.assertEqual(sink.heads()[0].framing, NO_BODY)

    def test_keepAlive(self):
        """Response keep-alive follows the version and Connection tokens."""
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
            (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        ]
        for data, expected in cases:
            reader, sink = feedResponse(data)
            self.assertEqual(sink.heads()[0].keepAlive, expected, data)

    def test_informationalThenFinal(self):
        """100 and 103 come out as INFO, then the final response as HEAD, BODY, END."""
        reader, sink = feedResponse(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(sink.kinds(), [INFO, INFO, HEAD, BODY, END])
        infos = [v for k, v in sink.events if k == INFO]
        self.assertEqual([i.status for i in infos], [100, 103])
        self.assertEqual(infos[1].headers, [(b"Link", b"</a.css>; rel=preload")])
        self.assertEqual(sink.heads()[0].status, 200)
        self.assertEqual(sink.body(), b"hi")

    def test_informationalSeparateFeeds(self):
        """INFO and the final response may arrive in separate feeds."""
        reader, sink = feedResponse(
            b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"hi"
        )
        self.assertEqual(sink.kinds(), [INFO, HEAD, BODY, END])

    def test_informationalThenBodyless(self):
        """A 100 before the response to a HEAD request: INFO, HEAD, END."""
        reader, sink = feedResponse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", bodyless=True
        )
        self.assertEqual(sink.kinds(), [INFO, HEAD, END])

    def test_closeAfterInformationalIsTruncation(self):
        """
        The upstream closing after a 1xx but before the final response did
        not end a response cleanly.
        """
        reader, sink = feedResponse(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(sink.kinds(), [INFO])
        # Was a bug: connectionLost() returns True (clean) here: the 1xx clears
        # inMessage, so the missing final response is not reported.
        self.assertFalse(reader.connectionLost())

    def test_switchingProtocols(self):
        """101 gives HEAD then UPGRADE with the bytes after the head."""
        reader, sink = feedResponse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00"
        )
        self.assertEqual(sink.kinds()[0], HEAD)
        self.assertEqual(sink.heads()[0].status, 101)
        self.assertEqual(sink.kinds()[-1], UPGRADE)
        self.assertEqual(sink.events[-1][1], b"\x81\x00")
        self.assertEqual(sink.errors(), [])

    def test_switchingProtocolsThenRaw(self):
        """After a 101, later feeds come out as RAW."""
        reader, sink = feedResponse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        reader.feed(b"\x81\x05hello")
        self.assertEqual(sink.events[-1], (RAW, b"\x81\x05hello"))
        self.assertEqual(sink.errors(), [])
        self.assertNotIn(END, sink.kinds())

    def test_switchingProtocolsWithoutUpgradeHeader(self):
        """A 101 that names no protocol is a bad response: ERROR 502 and no UPGRADE."""
        reader, sink = feedResponse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertNotIn(UPGRADE, sink.kinds())
        self.assertEqual(sink.kinds()[-1], ERROR)
        self.assertEqual(sink.errors()[0].status, 502)

    def test_switchingProtocolsDataPastBound(self):
        """Bytes after a 101 head are not lost when the feed is longer than maxHeadSize."""
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        data = b"w" * 200
        reader, sink = feedResponse(head + data, maxHeadSize=100)
        delivered = b"".join(v for k, v in sink.events if k in (UPGRADE, RAW))
        # Was a bug: only 23 of the 200 bytes come out; the rest of the feed past
        # maxHeadSize is dropped (same cause as the CONNECT data loss).
        self.assertEqual(delivered, data)

    def test_truncatedContentLength(self):
        """EOF inside a Content-Length body is truncation: False and no END."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        self.assertFalse(reader.connectionLost())
        self.assertNotIn(END, sink.kinds())

    def test_truncatedChunked(self):
        """EOF inside a chunked body is truncation: False and no END."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        self.assertFalse(reader.connectionLost())
        self.assertNotIn(END, sink.kinds())

    def test_truncatedBeforeLastChunk(self):
        """EOF after a whole chunk but before the last chunk is still truncation."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        self.assertFalse(reader.connectionLost())
        self.assertNotIn(END, sink.kinds())

    def test_truncatedHead(self):
        """EOF inside the head is truncation."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-")
        self.assertFalse(reader.connectionLost())
        self.assertEqual(sink.events, [])

    def test_closeBeforeAnyByte(self):
        """
        EOF before any byte of an expected response is not a clean end (the
        exchange decides between a retry and a 502); nothing is emitted.
        """
        reader, sink = responseReader()
        self.assertFalse(reader.connectionLost())
        self.assertEqual(sink.events, [])

    def test_closeAfterEnd(self):
        """EOF after a complete response is clean and emits nothing more."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        self.assertTrue(reader.connectionLost())
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])

    def test_garbage(self):
        """A response that is not HTTP gives ERROR 502."""
        reader, sink = feedResponse(b"SSH-2.0-OpenSSH_9.6\r\n")
        self.assertEqual(sink.kinds(), [ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_contentLengthWithTransferEncoding(self):
        """A response with both Content-Length and chunked gives ERROR 502."""
        reader, sink = feedResponse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        )
        self.assertEqual(sink.kinds(), [ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_duplicateContentLength(self):
        """Two differing Content-Lengths in a response give ERROR 502."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(sink.kinds(), [ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_badChunkSize(self):
        """A bad chunk size in a response gives ERROR 502 after the HEAD."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n")
        self.assertEqual(sink.kinds(), [HEAD, ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_headOverBound(self):
        """A response head over maxHeadSize gives ERROR 502, whole or byte by byte."""
        data = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
        for chunks in ([data], bytewise(data)):
            reader, sink = feedResponse(*chunks, maxHeadSize=100)
            self.assertEqual(sink.kinds()[0], ERROR)
            self.assertEqual(sink.errors()[0].status, 502)
            self.assertIn("100", sink.errors()[0].reason)

    def test_headAndBodyInOneFeed(self):
        """A small response head with a large body in one feed does not trip the bound."""
        body = b"r" * 4000
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n" + body, maxHeadSize=100)
        self.assertEqual(sink.errors(), [])
        self.assertEqual(sink.body(), body)
        self.assertEqual(sink.kinds()[-1], END)

    def test_finalHeadAfterInformationalBounded(self):
        """After a 1xx, the final response head is bounded by maxHeadSize too."""
        reader, sink = feedResponse(b"HTTP/1.1 100 Continue\r\n\r\n", maxHeadSize=100)
        reader.feed(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 300)
        # Was a bug: no ERROR: after the INFO, inHead stays False until llhttp
        # begins the next message, so the whole feed bypasses the bound (the
        # 502 only comes a feed or two later, at about twice the bound).
        self.assertEqual(sink.kinds(), [INFO, ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_dataAfterEndLaterFeed(self):
        """Bytes after the end of the response, in a later feed, give ERROR 502."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"extra")
        self.assertEqual(sink.kinds(), [HEAD, BODY, END, ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_dataAfterEndSameFeed(self):
        """Bytes after the end of the response in the same feed give ERROR 502."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiextra")
        self.assertEqual(sink.kinds(), [HEAD, BODY, END, ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_secondResponseSameFeedReason(self):
        """
        An unrequested second response in the same feed gives ERROR 502 with
        a reason fit for a client, not a Python exception message.
        """
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(sink.kinds(), [HEAD, BODY, END, ERROR])
        # Was a bug: the reason is "'NoneType' object has no attribute
        # 'get_status_code'" (llhttp parses on after on_message_complete set
        # parser to None; the AttributeError text becomes the reason).
        self.assertNotIn("NoneType", sink.errors()[0].reason)

    def test_dataAfterBodylessEndSameFeed(self):
        """A body sent in answer to HEAD, in the same feed as the head, gives ERROR."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", bodyless=True)
        self.assertEqual(sink.kinds(), [HEAD, END, ERROR])

    def test_dataBeforeExpect(self):
        """Bytes before any expect() give ERROR 502."""
        sink = RecordingSink()
        reader = ResponseReader(sink)
        sink.reader = reader
        reader.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(sink.kinds(), [ERROR])
        self.assertEqual(sink.errors()[0].status, 502)

    def test_errorStopsParsing(self):
        """After an ERROR, later feeds produce no events."""
        reader, sink = feedResponse(b"garbage\r\n\r\n")
        reader.feed(b"more")
        # Was a bug: the second feed comes out as a RAW event after the ERROR.
        self.assertEqual(sink.kinds(), [ERROR])

    def test_reuseAfterExpect(self):
        """expect() again after END reads the next response on a kept-alive connection."""
        reader, sink = feedResponse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        reader.expect(False)
        reader.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb")
        self.assertEqual(sink.kinds(), [HEAD, BODY, END, HEAD, BODY, END])
        self.assertEqual([h.status for h in sink.heads()], [200, 404])

    def test_bytewiseEqualsWhole(self):
        """A chunked response with a 1xx fed byte by byte gives the same events as whole."""
        data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        self.assertEqual(summary(feedResponse(*bytewise(data))[1].events),
                         summary(feedResponse(data)[1].events))

    def test_pausedQueuesResponse(self):
        """While paused, response events queue and come out on resume()."""
        reader, sink = responseReader()
        reader.pause()
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(sink.events, [])
        self.assertEqual(reader.queuedBytes, 2)
        reader.resume()
        self.assertEqual(sink.kinds(), [HEAD, BODY, END])


class FrameResponseTests(SynchronousTestCase):
    """L{h1.frameResponse} on its own."""

    def frame(self, status, headers, bodyless=False, version=b"1.1"):
        head = h1.ResponseHead(status, b"", version, headers)
        return h1.frameResponse(head, bodyless), head

    def test_decisions(self):
        """The framing follows RFC 9112 section 6.3."""
        cases = [
            (200, [(b"Content-Length", b"3")], False, LENGTH),
            (200, [(b"Content-Length", b"0")], False, NO_BODY),
            (200, [(b"Transfer-Encoding", b"chunked")], False, CHUNKED),
            (200, [(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")], False, CHUNKED),
            (200, [(b"Transfer-Encoding", b"chunked, gzip")], False, UNTIL_CLOSE),
            (200, [], False, UNTIL_CLOSE),
            (200, [(b"Content-Length", b"3")], True, NO_BODY),
            (204, [(b"Content-Length", b"3")], False, NO_BODY),
            (304, [(b"Transfer-Encoding", b"chunked")], False, NO_BODY),
        ]
        for status, headers, bodyless, framing in cases:
            error, head = self.frame(status, headers, bodyless)
            self.assertIsNone(error)
            self.assertEqual(head.framing, framing, (status, headers, bodyless))

    def test_conflictingContentLength(self):
        """Conflicting Content-Lengths are refused; equal ones are accepted."""
        self.assertIsNotNone(self.frame(200, [(b"Content-Length", b"3"), (b"Content-Length", b"4")])[0])
        error, head = self.frame(200, [(b"Content-Length", b"3"), (b"Content-Length", b"3")])
        self.assertIsNone(error)
        self.assertEqual(head.length, 3)


class SerializeTests(SynchronousTestCase):
    """Head serialisation and chunk framing."""

    def test_serializeHead(self):
        """serializeHead joins the start line and headers with CRLF and ends with a blank line."""
        self.assertEqual(
            h1.serializeHead(b"GET / HTTP/1.1", [(b"Host", b"a"), (b"X", b"1")]),
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n",
        )

    def test_serializeRoundTrip(self):
        """A serialised request head parses back to the same method, target and headers."""
        headers = [(b"Host", b"a"), (b"X-A", b"1"), (b"X-A", b"2")]
        reader, sink = feedRequest(h1.serializeHead(b"GET /p HTTP/1.1", headers))
        head = sink.heads()[0]
        self.assertEqual((head.method, head.target, head.headers), (b"GET", b"/p", headers))

    def test_chunk(self):
        """chunk() frames data with its hex size."""
        self.assertEqual(h1.chunk(b"hello world!!!!!"), b"10\r\nhello world!!!!!\r\n")
        self.assertEqual(h1.LAST_CHUNK, b"0\r\n\r\n")


# Property tests

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=/.,:", min_size=0, max_size=20).map(str.strip)
_reserved = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect"}


@st.composite
def validRequests(draw):
    """A valid HTTP/1.1 request: (bytes, headWithoutFraming)."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    path = b"/" + draw(st.text(alphabet="abcxyz0123456789/._-~%", max_size=30)).encode("ascii")
    extra = draw(st.lists(st.tuples(_token, _value), max_size=6))
    headers = [(b"Host", b"example.com")]
    headers += [(n.encode(), v.encode()) for n, v in extra if n.lower() not in _reserved]
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=300))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 64), max_size=10))
        payload = b""
        rest = body
        for size in sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            ext = draw(st.sampled_from([b"", b";a=b", b";x"]))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        if rest:
            payload += h1.chunk(rest)
        payload += h1.LAST_CHUNK
    else:
        payload = b""
    return h1.serializeHead(method + b" " + path + b" HTTP/1.1", headers) + payload


def _splitAt(data, cuts):
    points = sorted(set(c % (len(data) + 1) for c in cuts))
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _checkOnlyEvents(testCase, sink):
    kinds = sink.kinds()
    for kind, value in sink.events:
        testCase.assertIn(kind, (HEAD, BODY, END, UPGRADE, RAW, ERROR))
        if kind == ERROR:
            testCase.assertIsInstance(value, ProtocolError)
            testCase.assertIn(value.status, (400, 431))
    testCase.assertLessEqual(kinds.count(ERROR), 1)


class RequestReaderPropertyTests(SynchronousTestCase):
    """Properties of L{RequestReader} over generated input."""

    @_PROPERTY
    @given(st.binary(max_size=400))
    def test_arbitraryBytesNeverRaise(self, data):
        """Arbitrary bytes never raise; they give events, at most one ERROR."""
        reader, sink = feedRequest(data, maxHeadSize=256)
        _checkOnlyEvents(self, sink)

    @_PROPERTY
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8))
    def test_arbitrarySplitBytesNeverRaise(self, data, cuts):
        """Arbitrary bytes in arbitrary pieces never raise either."""
        reader, sink = feedRequest(*_splitAt(data, cuts), maxHeadSize=256)
        _checkOnlyEvents(self, sink)

    @_STRUCTURED
    @given(st.lists(st.sampled_from([GET, POST, CHUNKED_POST, CONNECT, b"\r\n", b"\x00", b"\r", b"\n",
                                     b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n",
                                     b"Host: x\r\n", b" folded\r\n", b"0\r\n\r\n", b"zz\r\n"]),
                    max_size=12),
           st.lists(st.integers(0, 600), max_size=6))
    def test_httpishFragmentsNeverRaise(self, fragments, cuts):
        """Recombined fragments of HTTP, in pieces, never raise."""
        data = b"".join(fragments)
        reader, sink = feedRequest(*_splitAt(data, cuts), maxHeadSize=200)
        _checkOnlyEvents(self, sink)

    @_STRUCTURED
    @given(validRequests(), st.lists(st.integers(0, 1000), max_size=10))
    def test_splitValidRequestSameEvents(self, data, cuts):
        """A valid request split anywhere gives the same HEAD/BODY/END as unsplit."""
        whole = feedRequest(data)[1]
        self.assertEqual(whole.errors(), [])
        self.assertEqual(whole.kinds()[-1], END)
        split = feedRequest(*_splitAt(data, cuts))[1]
        self.assertEqual(summary(split.events), summary(whole.events))

    @_STRUCTURED
    @given(validRequests(), st.lists(st.integers(0, 1000), max_size=10))
    def test_splitValidRequestWithinBound(self, data, cuts):
        """With maxHeadSize exactly the head size, any split of a valid request is still accepted."""
        headSize = data.index(b"\r\n\r\n") + 4
        split = feedRequest(*_splitAt(data, cuts), maxHeadSize=headSize)[1]
        self.assertEqual(split.errors(), [])
        self.assertEqual(summary(split.events), summary(feedRequest(data)[1].events))

    @_STRUCTURED
    @given(st.lists(validRequests(), min_size=2, max_size=3), st.lists(st.integers(0, 3000), max_size=10))
    def test_splitPipelinedRequestsSameEvents(self, requests, cuts):
        """Pipelined valid requests split anywhere give the same events as unsplit."""
        data = b"".join(requests)
        whole = feedRequest(data)[1]
        self.assertEqual(whole.kinds().count(END), len(requests))
        split = feedRequest(*_splitAt(data, cuts))[1]
        self.assertEqual(summary(split.events), summary(whole.events))

    @_STRUCTURED
    @given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
    def test_splitConnectKeepsEveryByte(self, early, cuts):
        """CONNECT plus any bytes, split anywhere: the bytes after the head all come out, in order."""
        data = CONNECT + early
        reader, sink = feedRequest(*_splitAt(data, cuts))
        self.assertEqual(sink.kinds()[:3], [HEAD, END, UPGRADE])
        self.assertEqual(b"".join(v for k, v in sink.events if k in (UPGRADE, RAW)), early)
