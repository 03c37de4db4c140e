"""
Tests for L{proxyd.errors}: the responses proxyd makes itself.
"""

from twisted.trial.unittest import SynchronousTestCase

from proxyd import h1
from proxyd.errors import ProxyError, errorResponse, statusPhrase


class _Sink:
    def __init__(self):
        self.events = []

    def messageEvent(self, kind, value):
        self.events.append((kind, value))


def parse(data):
    """Parse a complete response with proxyd's own reader: (head, body, events)."""
    sink = _Sink()
    reader = h1.ResponseReader(sink)
    reader.expect(False)
    reader.feed(data)
    kinds = [k for k, _ in sink.events]
    head = [v for k, v in sink.events if k == h1.HEAD][0]
    body = b"".join(v for k, v in sink.events if k == h1.BODY)
    return head, body, kinds


def header(head, name):
    return [v for n, v in head.headers if n.lower() == name.lower()]


class ProxyErrorTests(SynchronousTestCase):
    """L{ProxyError} carries the status and reason the client will see."""

    def test_attributes(self):
        """status and reason are attributes; str() gives both."""
        e = ProxyError(502, "connection refused by a:80")
        self.assertEqual((e.status, e.reason), (502, "connection refused by a:80"))
        self.assertEqual(str(e), "502 connection refused by a:80")
        self.assertIsInstance(e, Exception)


class StatusPhraseTests(SynchronousTestCase):
    """L{statusPhrase} gives the standard reason phrase."""

    def test_known(self):
        """Known statuses get their standard phrase as bytes."""
        self.assertEqual(statusPhrase(400), b"Bad Request")
        self.assertEqual(statusPhrase(407), b"Proxy Authentication Required")
        self.assertEqual(statusPhrase(431), b"Request Header Fields Too Large")
        self.assertEqual(statusPhrase(504), b"Gateway Timeout")

    def test_unknown(self):
        """An unknown status gets a generic phrase instead of failing."""
        self.assertEqual(statusPhrase(599), b"Error")


class ErrorResponseTests(SynchronousTestCase):
    """L{errorResponse} is a complete, short, text/plain response."""

    def test_wellFormed(self):
        """It parses as one complete response with the given status."""
        head, body, kinds = parse(errorResponse(502, "connection refused by example.com:80"))
        self.assertEqual(kinds, [h1.HEAD, h1.BODY, h1.END])
        self.assertEqual((head.status, head.reason, head.version), (502, b"Bad Gateway", b"1.1"))

    def test_textPlain(self):
        """The body is text/plain (UTF-8)."""
        head, body, kinds = parse(errorResponse(403, "denied"))
        self.assertEqual(header(head, b"Content-Type"), [b"text/plain; charset=utf-8"])

    def test_contentLengthRight(self):
        """Content-Length is the body's exact length, for every status and reason."""
        for status, reason in [(400, "malformed request: bad chunk size"), (431, "x" * 300),
                               (504, "timed out connecting to a:443 after 10s"), (599, "")]:
            head, body, kinds = parse(errorResponse(status, reason))
            self.assertEqual(header(head, b"Content-Length"), [b"%d" % len(body)])
            self.assertEqual(kinds[-1], h1.END)

    def test_namesReason(self):
        """The body names the status, its phrase and the reason."""
        head, body, kinds = parse(errorResponse(502, "connection refused by example.com:80"))
        self.assertIn(b"502", body)
        self.assertIn(b"Bad Gateway", body)
        self.assertIn(b"connection refused by example.com:80", body)
        self.assertTrue(body.endswith(b"\n"))

    def test_connectionClose(self):
        """By default the response says Connection: close."""
        head, body, kinds = parse(errorResponse(400, "bad"))
        self.assertEqual(header(head, b"Connection"), [b"close"])
        self.assertFalse(head.keepAlive)

    def test_keepOpen(self):
        """With close=False there is no Connection: close."""
        head, body, kinds = parse(errorResponse(403, "denied", close=False))
        self.assertEqual(header(head, b"Connection"), [])
        self.assertTrue(head.keepAlive)

    def test_via(self):
        """proxyd names itself in Via."""
        head, body, kinds = parse(errorResponse(502, "x"))
        self.assertEqual(header(head, b"Via"), [b"1.1 proxyd"])

    def test_extraHeaders(self):
        """Extra headers (a 407's Proxy-Authenticate) are included."""
        head, body, kinds = parse(
            errorResponse(407, "proxy authentication required",
                          extraHeaders=[(b"Proxy-Authenticate", b'Basic realm="proxyd"')])
        )
        self.assertEqual(head.status, 407)
        self.assertEqual(header(head, b"Proxy-Authenticate"), [b'Basic realm="proxyd"'])

    def test_nonAsciiReason(self):
        """A non-ASCII reason is sent as UTF-8 and counted in bytes."""
        head, body, kinds = parse(errorResponse(502, "cannot resolve host 'bücher.example'"))
        self.assertIn("bücher".encode("utf-8"), body)
        self.assertEqual(header(head, b"Content-Length"), [b"%d" % len(body)])

    def test_reasonCannotInjectHeaders(self):
        """A reason containing CRLF stays in the body and adds no header."""
        data = errorResponse(400, "bad\r\nX-Injected: 1\r\n\r\nHTTP/1.1 200 OK")
        head, body, kinds = parse(data)
        self.assertEqual(header(head, b"X-Injected"), [])
        self.assertIn(b"X-Injected", body)
        self.assertEqual(kinds, [h1.HEAD, h1.BODY, h1.END])

    def test_short(self):
        """The whole response is short."""
        self.assertLess(len(errorResponse(504, "timed out connecting to example.com:443 after 10s")), 400)
