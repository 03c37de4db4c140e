"""
Hostile and broken clients: malformed and ambiguous requests get 400 and a
close (no smuggling), oversized heads 431, slowloris is cut off, the
connection limit refuses cleanly, and none of it leaks descriptors or
disturbs other clients.
"""

import hashlib
import socket
import struct
import threading
import time
import uuid

import pytest
import requests

from tests.integration.origin import (
    HELLO,
    ConnectionClosed,
    RawConnection,
    patternSha256,
)
from tests.polling import waitFor

HEADER_TIMEOUT = 2
MAX_HEADER = 8192


@pytest.fixture(scope="module")
def hostile(moduleProxyd):
    return moduleProxyd("--header-timeout", str(HEADER_TIMEOUT),
                        "--max-header-size", str(MAX_HEADER))


def _statusThenClose(d, data, timeout=10):
    """Send data; return (status or None, closed?)."""
    with RawConnection(d.address, timeout=timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return None, True
        try:
            resp = c.readResponse()
        except (ConnectionClosed, ConnectionResetError):
            return None, True
        return resp, c.closedWithin(timeout)


def _request(origin, tag, extra):
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (
        origin.url("/echo?" + tag).encode(), origin.authority.encode())) + extra


BAD_REQUESTS = {
    "garbage": lambda o, t: b"\x01\x02 this is not http \xff\xfe\r\n\r\n",
    "cl-and-te": lambda o, t: _request(o, t, b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "te-and-cl": lambda o, t: _request(o, t, b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
    "obs-fold": lambda o, t: _request(o, t, b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    "bare-cr": lambda o, t: _request(o, t, b"X-Cr: a\rb\r\nContent-Length: 0\r\n\r\n"),
    "nul": lambda o, t: _request(o, t, b"X-Nul: a\x00b\r\nContent-Length: 0\r\n\r\n"),
    "two-content-lengths": lambda o, t: _request(o, t, b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    "content-length-list": lambda o, t: _request(o, t, b"Content-Length: 5, 6\r\n\r\nhello!"),
    "negative-content-length": lambda o, t: _request(o, t, b"Content-Length: -1\r\n\r\n"),
    "bad-chunk-size": lambda o, t: _request(o, t, b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    "unknown-transfer-encoding": lambda o, t: _request(o, t, b"Transfer-Encoding: gzip\r\n\r\n"),
    "space-before-colon": lambda o, t: _request(o, t, b"Content-Length : 0\r\n\r\n"),
    "no-host-absolute-bad": lambda o, t: b"GET http:///nohost HTTP/1.1\r\nHost: \r\n\r\n",
    "bad-version": lambda o, t: b"GET http://127.0.0.1/ HTTP/9.9x\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformedRequestIs400AndClose(hostile, origin, name):
    """Malformed or ambiguous framing: 400, the connection closed, nothing reaches the origin."""
    tag = uuid.uuid4().hex
    resp, closed = _statusThenClose(hostile, BAD_REQUESTS[name](origin, tag))
    assert resp is not None, "closed without a response"
    assert resp.status == 400, resp
    assert any(v.startswith("text/plain") for v in resp.header("Content-Type")), resp
    assert closed, "connection left open after 400"
    assert not any(tag in p for p in origin.paths()), "the bad request reached the origin"


def test_smuggledSecondRequestNotRelayed(hostile, origin):
    """CL+TE with a request hidden in the body: 400, and the hidden request never reaches the origin."""
    tag = uuid.uuid4().hex
    hidden = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
        origin.url("/hello?smuggled-" + tag).encode(), origin.authority.encode())
    body = b"0\r\n\r\n" + hidden
    data = _request(origin, tag, b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)) + body
    resp, closed = _statusThenClose(hostile, data)
    assert resp is not None and resp.status == 400, resp
    assert closed
    assert not any(tag in p for p in origin.paths())


def test_http2PrefaceRejected(hostile):
    """An HTTP/2 prior-knowledge preface gets a 4xx/5xx or a clean close, never a hang."""
    with RawConnection(hostile.address, timeout=10) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert c.closedWithin(10), "HTTP/2 preface: connection not closed"
    if c.buf:
        assert c.buf.startswith(b"HTTP/1.1 4") or c.buf.startswith(b"HTTP/1.1 5"), c.buf[:100]


def test_requestHeadTooLargeIs431(hostile, origin):
    """A request head over --max-header-size: 431."""
    big = b"X-Big: " + b"a" * (MAX_HEADER * 2) + b"\r\n"
    with RawConnection(hostile.address, timeout=10) as c:
        try:
            c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (origin.url("/hello").encode(),
                                                          origin.authority.encode()) + big + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = c.readResponse()
    assert resp.status == 431, resp


def test_requestHeadJustUnderLimitWorks(hostile, origin):
    """A request head comfortably under --max-header-size is relayed."""
    with RawConnection(hostile.address, timeout=10) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\nX-Big: %s\r\n\r\n" % (
            origin.url("/hello").encode(), origin.authority.encode(), b"a" * (MAX_HEADER // 2)))
        assert c.readResponse().body == HELLO


def test_endlessRequestLineIs4xx(hostile):
    """A request line that never ends is cut off at --max-header-size, not buffered forever."""
    with RawConnection(hostile.address, timeout=10) as c:
        try:
            c.send(b"GET http://127.0.0.1/" + b"a" * (MAX_HEADER * 4))
        except (BrokenPipeError, ConnectionResetError):
            return
        assert c.closedWithin(10)
    if c.buf:
        assert c.buf.split(b" ")[1] in (b"400", b"414", b"431"), c.buf[:100]


def test_slowlorisClosedAfterHeaderTimeout(hostile, origin):
    """A client trickling its head is closed after --header-timeout even though bytes keep coming."""
    with RawConnection(hostile.address, timeout=10) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (origin.url("/hello").encode(),
                                                      origin.authority.encode()))
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < HEADER_TIMEOUT + 8:
            try:
                c.send(b"X-a: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if c.closedWithin(0.3):
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed, "slowloris still connected after %.1fs" % elapsed
    assert elapsed >= HEADER_TIMEOUT - 0.5
    if c.buf:
        assert c.buf.split(b" ")[1] in (b"408", b"400"), c.buf[:100]


def test_silentClientClosedAfterHeaderTimeout(hostile):
    """A client that connects and sends nothing is closed after --header-timeout."""
    with RawConnection(hostile.address, timeout=10) as c:
        assert c.closedWithin(HEADER_TIMEOUT + 6)


def test_maxConnections(proxyd, origin):
    """--max-connections 5: a 6th connection is refused cleanly while the first 5 keep working."""
    d = proxyd("--max-connections", "5")
    req = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (origin.url("/hello").encode(),
                                                     origin.authority.encode())
    conns = []

    def oneMore():
        # The daemon may not have seen earlier probes close yet: retry on refusal.
        c = RawConnection(d.address, timeout=10)
        try:
            c.send(req)
            if c.readResponse().body == HELLO:
                conns.append(c)
                return True
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            pass
        c.close()
        return False

    try:
        for _ in range(5):
            waitFor(oneMore, timeout=10, interval=0.1, message="a connection under the limit")
        # The 6th: refused cleanly (closed or reset, or an error status), promptly.
        sixth = None
        try:
            sixth = RawConnection(d.address, timeout=10)
            try:
                sixth.send(req)
            except (BrokenPipeError, ConnectionResetError):
                pass
            refused = sixth.closedWithin(5)
            if not refused:
                pytest.fail("6th connection neither closed nor answered in 5s")
            if sixth.buf:
                status = int(sixth.buf.split(b" ")[1])
                assert status >= 500 or status == 429, sixth.buf[:100]
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        finally:
            if sixth:
                sixth.close()
        for c in conns:
            c.send(req)
            assert c.readResponse().body == HELLO
        # Freeing one slot lets a new client in.
        conns.pop().close()

        def newOneWorks():
            try:
                with RawConnection(d.address, timeout=5) as c:
                    c.send(req)
                    return c.readResponse().body == HELLO
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                return False
        waitFor(newOneWorks, timeout=10, interval=0.2, message="a slot to free up")
    finally:
        for c in conns:
            c.close()
    assert d.running()
    assert "Traceback" not in d.logText()


def test_clientDisconnectMidDownloadDoesNotDisturbOthers(hostile, origin):
    """A client that vanishes mid-download (reset) does not disturb a parallel download."""
    n = 20 * 1024 * 1024
    result = {}

    def good():
        h = hashlib.sha256()
        size = 0
        with requests.get(origin.url("/bytes?n=%d" % n), proxies=hostile.proxies,
                          stream=True, timeout=60) as r:
            for chunk in r.iter_content(1 << 16):
                h.update(chunk)
                size += len(chunk)
        result["good"] = (size, h.hexdigest())

    t = threading.Thread(target=good)
    t.start()
    for _ in range(5):
        c = RawConnection(hostile.address, timeout=10)
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
            origin.url("/bytes?n=%d" % (100 * 1024 * 1024)).encode(), origin.authority.encode()))
        c.readExactly(200_000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    t.join(60)
    assert not t.is_alive()
    assert result["good"] == (n, patternSha256(n))
    r = requests.get(origin.url("/hello"), proxies=hostile.proxies, timeout=10)
    assert r.content == HELLO


def _malformed(d, i):
    """One of several kinds of bad connection."""
    c = RawConnection(d.address, timeout=10)
    try:
        kind = i % 5
        if kind == 0:
            c.send(b"\x16\x03\x01 garbage\r\n\r\n")
        elif kind == 1:
            c.send(b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        elif kind == 2:
            c.send(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nX: a\x00\r\n\r\n")
        elif kind == 3:
            c.send(b"GET http://127.0.0.1:1/ HTT")  # then vanish mid-head
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        else:
            c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        c.closedWithin(10)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        c.close()


def test_noFdLeakAfterMalformedConnections(proxyd):
    """After 500 malformed connections the daemon's open descriptors are back where they were."""
    d = proxyd("--header-timeout", "5")
    r = requests.get(d.url + "/healthz", timeout=10)
    assert r.status_code == 200
    baseline = waitFor(lambda: d.openFds(), timeout=1)
    for i in range(500):
        _malformed(d, i)
    waitFor(lambda: d.openFds() <= baseline + 2, timeout=15,
            message="fd count back to %d (now %d)" % (baseline, d.openFds()))
    assert requests.get(d.url + "/healthz", timeout=10).text.strip() == "ok"
    assert "Traceback" not in d.logText()


def test_badInputLoggedWithoutTraceback(hostile, origin):
    """All of the above left the shared daemon up, with no traceback in its log."""
    assert hostile.running()
    r = requests.get(origin.url("/hello"), proxies=hostile.proxies, timeout=10)
    assert r.content == HELLO
    assert "Traceback" not in hostile.logText()
