"""
L{proxyd.reframing}: the framing proxyd writes after the plugins, alone.
"""

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from proxyd import h1
from proxyd.message import Request
from proxyd.reframing import (
    bodyless,
    keepsLength,
    requestFraming,
    streamedResponseFraming,
    upstreamRequestHead,
    wholeResponseFraming,
)


class _Filter:
    def __init__(self, keeps):
        self.keepsLength = keeps


def _filters(*keeps):
    return [("stage", _Filter(k)) for k in keeps]


def _request(framing=h1.NO_BODY, length=0, headers=()):
    head = h1.RequestHead(b"POST", b"/", b"1.1", list(headers))
    head.framing, head.length = framing, length
    return head


def _response(framing, length=0, headers=()):
    head = h1.ResponseHead(200, b"OK", b"1.1", list(headers))
    head.framing, head.length = framing, length
    return head


class RulesTests(SynchronousTestCase):
    def test_bodyless(self):
        self.assertTrue(bodyless(b"HEAD", 200))
        for status in (100, 199, 204, 304):
            self.assertTrue(bodyless(b"GET", status))
        self.assertFalse(bodyless(b"GET", 200))

    def test_keepsLength(self):
        self.assertTrue(keepsLength(None))
        self.assertTrue(keepsLength(_filters(True, True)))
        self.assertFalse(keepsLength(_filters(True, False)))


class RequestFramingTests(SynchronousTestCase):
    def test_wholeBodyHasItsLength(self):
        self.assertEqual(requestFraming(_request(h1.CHUNKED), b"abc", None), ([(b"Content-Length", b"3")], False))

    def test_noBody(self):
        self.assertEqual(requestFraming(_request(), None, None), ([], False))

    def test_lengthKeptByKeepingFilters(self):
        self.assertEqual(
            requestFraming(_request(h1.LENGTH, 10), None, _filters(True)), ([(b"Content-Length", b"10")], False)
        )

    def test_lengthChangingFilterChunks(self):
        self.assertEqual(
            requestFraming(_request(h1.LENGTH, 10), None, _filters(False)),
            ([(b"Transfer-Encoding", b"chunked")], True),
        )

    def test_chunkedStaysChunked(self):
        self.assertEqual(requestFraming(_request(h1.CHUNKED), None, None), ([(b"Transfer-Encoding", b"chunked")], True))


class UpstreamRequestHeadTests(SynchronousTestCase):
    def test_order(self):
        """Host first, the plugins' headers, the framing, Via last; framing from the plugins is dropped."""
        request = Request(b"POST", b"http://example.com/p", Headers({b"X-A": [b"1"], b"Content-Length": [b"99"]}))
        data, upgrading, chunked = upstreamRequestHead(
            request, _request(h1.LENGTH, 5), b"/p", b"example.com", None, None, None
        )
        self.assertEqual(
            data,
            b"POST /p HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nContent-Length: 5\r\nVia: 1.1 proxyd\r\n\r\n",
        )
        self.assertEqual((upgrading, chunked), (False, False))


class ResponseFramingTests(SynchronousTestCase):
    def test_noBodyKeepsUpstreamFraming(self):
        head = _response(h1.NO_BODY, headers=[(b"Content-Length", b"42"), (b"X-Other", b"1")])
        self.assertEqual(streamedResponseFraming(head, None), ([(b"Content-Length", b"42")], h1.NO_BODY, None))

    def test_lengthWithoutFilters(self):
        self.assertEqual(
            streamedResponseFraming(_response(h1.LENGTH, 5), None), ([(b"Content-Length", b"5")], h1.LENGTH, None)
        )

    def test_keepingFiltersPromiseTheLength(self):
        self.assertEqual(
            streamedResponseFraming(_response(h1.LENGTH, 5), _filters(True)),
            ([(b"Content-Length", b"5")], h1.LENGTH, 5),
        )

    def test_changingFilterRechunks(self):
        self.assertEqual(streamedResponseFraming(_response(h1.LENGTH, 5), _filters(False)), ([], h1.CHUNKED, None))

    def test_otherFramingUnchanged(self):
        self.assertEqual(streamedResponseFraming(_response(h1.CHUNKED), None), ([], h1.CHUNKED, None))

    def test_whole(self):
        self.assertEqual(wholeResponseFraming(b"GET", 200, b"hi"), ([(b"Content-Length", b"2")], b"hi"))
        self.assertEqual(wholeResponseFraming(b"HEAD", 200, b"hi"), ([(b"Content-Length", b"2")], b""))
        self.assertEqual(wholeResponseFraming(b"GET", 304, b"hi"), ([], b""))
