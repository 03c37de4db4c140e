"""
The plain-HTTP relay of the forward proxy, end to end: real twistd, real
clients (curl, requests, httpx, raw sockets), origins on 127.0.0.1 / ::1.
"""

import hashlib
import http.client
import json
import os
import time
import uuid

import httpx
import pytest
import requests

from tests.integration.conftest import needsIPv6, runCurl
from tests.integration.origin import (
    CHUNKED_BODY,
    CLOSE_DELIMITED_BODY,
    HELLO,
    Blackhole,
    RawConnection,
    patternChunks,
    patternSha256,
)
from tests.polling import observe, rssKiB, waitFor

BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def fwd(moduleProxyd, tunnelTarget):
    """The shared forward proxy for this module (defaults, but CONNECT to the tunnel target)."""
    return moduleProxyd("--connect-ports", str(tunnelTarget.port))


def _get(proxy, url, **kw):
    kw.setdefault("timeout", 15)
    return requests.get(url, proxies=proxy.proxies, **kw)


def _rawRequest(conn, method, url, headers=(), body=b"", authority=None):
    """Send one absolute-form request with exact headers."""
    lines = [b"%s %s HTTP/1.1" % (method.encode(), url.encode())]
    if authority is not None:
        lines.append(b"Host: " + authority.encode())
    for k, v in headers:
        lines.append(b"%s: %s" % (k.encode(), v.encode()))
    conn.send(b"\r\n".join(lines) + b"\r\n\r\n" + body)


# ---------------------------------------------------------------------------
# Relay basics


def test_curlGet(fwd, origin, curl):
    """curl -x fetches a small document through the proxy."""
    r = runCurl(curl, ["-x", fwd.url, origin.url("/hello")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_requestsGet(fwd, origin):
    """requests with proxies= fetches through the proxy."""
    r = _get(fwd, origin.url("/hello"))
    assert r.status_code == 200
    assert r.content == HELLO


def test_httpxGet(fwd, origin):
    """httpx with proxy= fetches through the proxy."""
    with httpx.Client(proxy=fwd.url, timeout=15) as client:
        r = client.get(origin.url("/hello"))
    assert r.status_code == 200
    assert r.content == HELLO


def test_originSeesOriginForm(fwd, origin):
    """The upstream request is in origin form, with the right Host and query."""
    r = _get(fwd, origin.url("/echo?x=1&y=two"))
    e = r.json()
    assert e["method"] == "GET"
    assert e["path"] == "/echo?x=1&y=two"
    hosts = [v for k, v in e["headers"] if k.lower() == "host"]
    assert hosts == [origin.authority]


def test_postBody(fwd, origin):
    """A POST body with Content-Length arrives intact."""
    body = os.urandom(300_000)
    r = requests.post(origin.url("/echo"), data=body, proxies=fwd.proxies, timeout=15)
    e = r.json()
    assert e["method"] == "POST"
    assert e["bodyLength"] == len(body)
    assert e["bodySha256"] == hashlib.sha256(body).hexdigest()


def test_putAndDelete(fwd, origin):
    """Other methods are relayed with their names."""
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        r = requests.request(method, origin.url("/echo"), data=b"x" if method != "DELETE" else None,
                             proxies=fwd.proxies, timeout=15)
        assert r.json()["method"] == method


def test_chunkedUpload(fwd, origin):
    """A chunked request body (generator in requests) arrives intact."""
    n = 3 * 1024 * 1024 + 17

    def gen():
        for c in patternChunks(n, chunk=50_000):
            yield bytes(c)

    r = requests.post(origin.url("/upload"), data=gen(), proxies=fwd.proxies, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"sha256": patternSha256(n), "length": n}


def test_rawChunkedUploadWithTrailer(fwd, origin):
    """Exact chunked bytes, chunk extensions and a trailer are decoded correctly."""
    body = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "POST", origin.url("/upload"), [("Transfer-Encoding", "chunked")],
                    body, authority=origin.authority)
        resp = c.readResponse()
    assert resp.status == 200, resp
    assert resp.json() == {"sha256": hashlib.sha256(b"hello world").hexdigest(), "length": 11}


def test_repeatedRequestHeadersKeepOrder(fwd, origin):
    """Repeated request headers reach the origin, all values, in order."""
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "GET", origin.url("/echo"), [
            ("X-Rep", "1"), ("X-Other", "a"), ("X-Rep", "2"), ("X-Rep", "3")],
            authority=origin.authority)
        resp = c.readResponse()
    headers = resp.json()["headers"]
    values = []
    for k, v in headers:
        if k.lower() == "x-rep":
            values += [p.strip() for p in v.split(",")]
    assert values == ["1", "2", "3"]
    assert [v for k, v in headers if k.lower() == "x-other"] == ["a"]


def test_repeatedResponseHeadersKeepOrder(fwd, origin):
    """Repeated response headers reach the client; Set-Cookie lines stay separate."""
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "GET", origin.url("/multi-headers"), authority=origin.authority)
        resp = c.readResponse()
    assert resp.status == 200
    assert resp.header("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    multi = [p.strip() for v in resp.header("X-Multi") for p in v.split(",")]
    assert multi == ["1", "2", "3"]


def test_hopByHopRequestHeadersStripped(fwd, origin):
    """Hop-by-hop request headers (and those Connection names) are not forwarded; Via is added."""
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "GET", origin.url("/echo"), [
            ("Connection", "keep-alive, X-Conn-Named"),
            ("X-Conn-Named", "secret"),
            ("Proxy-Connection", "keep-alive"),
            ("Keep-Alive", "300"),
            ("TE", "trailers"),
            ("Trailer", "X-Trail"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-End-To-End", "kept"),
        ], authority=origin.authority)
        resp = c.readResponse()
    names = [k.lower() for k, v in resp.json()["headers"]]
    for hop in ("x-conn-named", "proxy-connection", "keep-alive", "te", "trailer",
                "proxy-authorization"):
        assert hop not in names, (hop, names)
    assert all("x-conn-named" not in v.lower() for k, v in resp.json()["headers"]
               if k.lower() == "connection")
    assert "x-end-to-end" in names
    assert "via" in names


def test_hopByHopResponseHeadersStripped(fwd, origin):
    """Hop-by-hop response headers are not passed to the client; Via is added."""
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "GET", origin.url("/hop-response"), authority=origin.authority)
        resp = c.readResponse()
    names = [k.lower() for k, v in resp.headers]
    for hop in ("x-hop-resp", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer"):
        assert hop not in names, (hop, resp.headers)
    assert resp.header("X-End-To-End") == ["kept"]
    assert resp.header("Via"), resp.headers


def test_viaAppendsToExisting(fwd, origin):
    """An existing Via is kept and proxyd's entry follows it."""
    with RawConnection(fwd.address) as c:
        _rawRequest(c, "GET", origin.url("/echo"), [("Via", "1.0 fred")],
                    authority=origin.authority)
        resp = c.readResponse()
    via = ", ".join(v for k, v in resp.json()["headers"] if k.lower() == "via")
    entries = [p.strip() for p in via.split(",")]
    assert entries[0] == "1.0 fred"
    assert len(entries) == 2, via


# ---------------------------------------------------------------------------
# Keep-alive and pooling


def test_clientKeepAlive(fwd, origin):
    """Several requests on one client connection are all answered."""
    with RawConnection(fwd.address) as c:
        for i in range(5):
            _rawRequest(c, "GET", origin.url("/echo?i=%d" % i), authority=origin.authority)
            resp = c.readResponse()
            assert resp.status == 200
            assert resp.json()["path"] == "/echo?i=%d" % i


def test_pipelinedRequestsAnsweredInOrder(fwd, origin):
    """Pipelined requests sent in one write are answered in order, even if the first is slowest."""
    reqs = b"".join(
        b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (origin.url(p).encode(), origin.authority.encode())
        for p in ("/delay?ms=400&id=one", "/delay?ms=0&id=two", "/hello", "/bytes?n=70000",
                  "/delay?ms=50&id=five"))
    with RawConnection(fwd.address, timeout=15) as c:
        c.send(reqs)
        bodies = [c.readResponse().body for _ in range(5)]
    assert bodies[0] == b"one"
    assert bodies[1] == b"two"
    assert bodies[2] == HELLO
    assert hashlib.sha256(bodies[3]).hexdigest() == patternSha256(70000)
    assert bodies[4] == b"five"


def test_pipelinedPostsAnsweredInOrder(fwd, origin):
    """Pipelined requests with bodies keep their bodies and their order."""
    bodies = [os.urandom(n) for n in (10, 70_000, 0, 5)]
    data = b"".join(
        b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            origin.url("/echo?n=%d" % i).encode(), origin.authority.encode(), len(b), b)
        for i, b in enumerate(bodies))
    with RawConnection(fwd.address, timeout=15) as c:
        c.send(data)
        for i, b in enumerate(bodies):
            e = c.readResponse().json()
            assert e["path"] == "/echo?n=%d" % i
            assert e["bodySha256"] == hashlib.sha256(b).hexdigest()


def test_upstreamPoolReuse(fwd, countingOrigin):
    """20 sequential requests from fresh client connections use far fewer upstream connections."""
    for i in range(20):
        r = _get(fwd, countingOrigin.url("/hello"))
        assert r.status_code == 200
    assert len(countingOrigin.requests) == 20
    assert countingOrigin.connections <= 3, countingOrigin.connections


def test_pooledConnectionClosedByOriginIsRetried(fwd, countingOrigin):
    """An origin that silently closes after each response: every GET still succeeds."""
    for i in range(10):
        r = _get(fwd, countingOrigin.url("/close-after?i=%d" % i))
        assert r.status_code == 200, i
        assert r.content == HELLO


def test_staleIdempotentRequestRetried(fwd, countingOrigin):
    """A GET sent on a pooled connection that the origin then drops is retried on a fresh one."""
    assert _get(fwd, countingOrigin.url("/drop-next")).content == HELLO
    tag = uuid.uuid4().hex
    r = _get(fwd, countingOrigin.url("/hello?" + tag))
    assert r.status_code == 200, r.text
    assert r.content == HELLO
    assert sum(tag in p for p in countingOrigin.paths()) in (1, 2)


def test_postWithBodyNeverRetried(fwd, countingOrigin):
    """A POST whose body was sent on a connection the origin drops is not re-sent: the origin sees it once."""
    assert _get(fwd, countingOrigin.url("/drop-next")).content == HELLO
    tag = uuid.uuid4().hex
    r = requests.post(countingOrigin.url("/echo?" + tag), data=b"x" * 1000,
                      proxies=fwd.proxies, timeout=15)
    seen = sum(tag in p for p in countingOrigin.paths())
    if r.status_code == 200:
        # proxyd chose a fresh connection for the POST: fine, but only once.
        assert seen == 1
    else:
        _assertProxyError(r, 502)
        assert seen == 1, "the POST was re-sent %d times" % seen


# ---------------------------------------------------------------------------
# Expect: 100-continue


@pytest.mark.parametrize("code", [417, 401])
def test_expectContinueRefusedEndToEnd(fwd, origin, code):
    """The origin's refusal of an Expect: 100-continue upload reaches the client before any body byte is sent."""
    with RawConnection(fwd.address, timeout=10) as c:
        _rawRequest(c, "POST", origin.url("/expect?code=%d" % code), [
            ("Content-Length", "50000000"), ("Expect", "100-continue")],
            authority=origin.authority)
        resp = c.readResponse(skipInformational=False)
    assert resp.status == code, resp


def test_expectContinueAccepted(fwd, origin):
    """Expect: 100-continue to a willing origin: 100 Continue, then the body, then 200."""
    body = os.urandom(200_000)
    with RawConnection(fwd.address, timeout=10) as c:
        _rawRequest(c, "POST", origin.url("/upload"), [
            ("Content-Length", str(len(body))), ("Expect", "100-continue")],
            authority=origin.authority)
        interim = c.readResponse(skipInformational=False)
        assert interim.status == 100, interim
        c.send(body)
        resp = c.readResponse()
    assert resp.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


def test_curlLargePostUsesExpect(fwd, origin, curl, tmp_path):
    """curl's own Expect: 100-continue POST of 5 MB goes through intact."""
    data = b"".join(bytes(c) for c in patternChunks(5_000_000))
    f = tmp_path / "body"
    f.write_bytes(data)
    r = runCurl(curl, ["-x", fwd.url, "--data-binary", "@%s" % f, "-H", "Expect: 100-continue",
                       origin.url("/upload")])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"sha256": patternSha256(5_000_000), "length": 5_000_000}


# ---------------------------------------------------------------------------
# Framing of responses


def test_headAnd204And304HaveNoBody(fwd, origin):
    """HEAD, 204 and 304 responses carry no body, and the connection stays usable."""
    with RawConnection(fwd.address, timeout=10) as c:
        _rawRequest(c, "HEAD", origin.url("/hello"), authority=origin.authority)
        r = c.readResponse(method="HEAD")
        assert r.status == 200
        assert r.header("Content-Length") == [str(len(HELLO))]
        _rawRequest(c, "HEAD", origin.url("/bytes?n=1000000"), authority=origin.authority)
        r = c.readResponse(method="HEAD")
        assert r.header("Content-Length") == ["1000000"]
        _rawRequest(c, "GET", origin.url("/status/204"), authority=origin.authority)
        assert c.readResponse().status == 204
        _rawRequest(c, "GET", origin.url("/status/304"), [("If-None-Match", '"v1"')],
                    authority=origin.authority)
        r = c.readResponse()
        assert r.status == 304
        assert r.header("ETag") == ['"v1"']
        _rawRequest(c, "GET", origin.url("/hello"), authority=origin.authority)
        r = c.readResponse()
        assert r.status == 200
        assert r.body == HELLO
        assert c.buf == b""


def test_curlHead(fwd, origin, curl):
    """curl -I through the proxy returns promptly with the origin's headers."""
    r = runCurl(curl, ["-I", "-x", fwd.url, origin.url("/bytes?n=12345")], timeout=15)
    assert r.returncode == 0, r.stderr
    assert b"content-length: 12345" in r.stdout.lower()


def test_chunkedResponseIntact(fwd, origin):
    """A chunked response arrives complete."""
    r = _get(fwd, origin.url("/chunked"))
    assert r.content == CHUNKED_BODY


def test_closeDelimitedResponseIntact(fwd, origin):
    """A close-delimited (no framing) response arrives complete."""
    r = _get(fwd, origin.url("/close-delimited"))
    assert r.content == CLOSE_DELIMITED_BODY


def test_closeDelimitedThenKeepAlive(fwd, origin):
    """After a close-delimited upstream response the client connection stays correct."""
    with RawConnection(fwd.address, timeout=10) as c:
        _rawRequest(c, "GET", origin.url("/close-delimited"), authority=origin.authority)
        r = c.readResponse()
        assert r.body == CLOSE_DELIMITED_BODY
        if any("close" in v.lower() for v in r.header("Connection")):
            return
        _rawRequest(c, "GET", origin.url("/hello"), authority=origin.authority)
        assert c.readResponse().body == HELLO


def test_curlChunkedAndCloseDelimited(fwd, origin, curl):
    """curl agrees on the chunked and close-delimited bodies."""
    for path, body in (("/chunked", CHUNKED_BODY), ("/close-delimited", CLOSE_DELIMITED_BODY)):
        r = runCurl(curl, ["-x", fwd.url, origin.url(path)])
        assert r.returncode == 0, (path, r.stderr)
        assert r.stdout == body, path


# ---------------------------------------------------------------------------
# Big transfers (streamed in the test as well)


@pytest.mark.slow
def test_bigDownloadRelay(fwd, origin):
    """A 200 MB download through the relay keeps its sha256."""
    h = hashlib.sha256()
    n = 0
    with requests.get(origin.url("/bytes?n=%d" % BIG), proxies=fwd.proxies,
                      stream=True, timeout=60) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            h.update(chunk)
            n += len(chunk)
    assert n == BIG
    assert h.hexdigest() == patternSha256(BIG)


@pytest.mark.slow
def test_bigUploadRelay(fwd, origin):
    """A 200 MB upload with Content-Length through the relay keeps its sha256."""
    conn = http.client.HTTPConnection(fwd.address[0], fwd.port, timeout=30)
    try:
        conn.putrequest("POST", origin.url("/upload"), skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", origin.authority)
        conn.putheader("Content-Length", str(BIG))
        conn.endheaders()
        for c in patternChunks(BIG):
            conn.send(c)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert json.loads(body) == {"sha256": patternSha256(BIG), "length": BIG}


def test_slowReaderBackpressureAndPoolReuse(proxyd, countingOrigin):
    """
    A client that stops reading a 64 MB download: proxyd's memory stays flat
    (the origin is slowed, not buffered), the body is intact once read, and
    the upstream connection that was paused is then reused correctly.
    """
    d = proxyd()
    n = 64 * 1024 * 1024
    for i in range(3):
        before = rssKiB(d.pid)
        with RawConnection(d.address, timeout=15) as c:
            _rawRequest(c, "GET", countingOrigin.url("/bytes?n=%d" % n), authority=countingOrigin.authority)
            # The slow reader: read nothing for a second while the origin pushes.
            samples = [before]
            observe(1.0, lambda: samples.append(rssKiB(d.pid)))
            peak = max(samples)
            assert peak - before < 10 * 1024, "proxyd grew by %d KiB for a stalled reader" % (peak - before)
            resp = c.readResponse()
        assert hashlib.sha256(resp.body).hexdigest() == patternSha256(n)
        # The next request (fresh client) reuses the pooled upstream connection.
        r = _get(d, countingOrigin.url("/hello?after=%d" % i), timeout=5)
        assert r.content == HELLO
    assert countingOrigin.connections <= 3


# ---------------------------------------------------------------------------
# Names and IPv6 upstreams


@needsIPv6
def test_ipv6Origin(fwd, origin6):
    """http://[::1]:port/ is relayed."""
    r = _get(fwd, origin6.url("/echo"))
    assert r.status_code == 200
    hosts = [v for k, v in r.json()["headers"] if k.lower() == "host"]
    assert hosts == [origin6.authority]


def test_hostName(fwd, origin):
    """A host name (localhost) is resolved and relayed to."""
    r = _get(fwd, "http://localhost:%d/hello" % origin.port)
    assert r.status_code == 200
    assert r.content == HELLO


# ---------------------------------------------------------------------------
# Requests to proxyd itself


def test_selfRoot(fwd):
    """GET / on the proxy port says it is proxyd and in which mode."""
    r = requests.get(fwd.url + "/", timeout=10)
    assert r.status_code == 200
    assert "proxyd" in r.text.lower()
    assert "forward" in r.text.lower()


def test_selfHealthz(fwd):
    """GET /healthz on the proxy port answers ok."""
    r = requests.get(fwd.url + "/healthz", timeout=10)
    assert r.status_code == 200
    assert r.text.strip() == "ok"


def test_selfUnknownPath(fwd):
    """Any other origin-form path on the proxy port is 404."""
    r = requests.get(fwd.url + "/nope", timeout=10)
    assert r.status_code == 404


# ---------------------------------------------------------------------------
# Errors proxyd makes itself


def _assertProxyError(resp, status, *words):
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers.get("Content-Type", "").startswith("text/plain"), resp.headers
    assert resp.text.strip(), "empty error body"
    text = resp.text.lower()
    if words:
        assert any(w in text for w in words), resp.text


def test_refusedUpstreamIs502(fwd):
    """An upstream that refuses the connection: 502, text/plain naming the reason."""
    from tests.integration.origin import freePort
    port = freePort()
    r = _get(fwd, "http://127.0.0.1:%d/x" % port)
    _assertProxyError(r, 502, "refused")


def test_garbageUpstreamIs502(fwd, garbageServer):
    """An upstream that answers garbage: 502."""
    r = _get(fwd, "http://%s/x" % garbageServer.authority)
    _assertProxyError(r, 502)


def test_responseHeadTooLargeIs502(fwd, origin):
    """An upstream response head over --max-header-size (default 64 KiB): 502."""
    r = _get(fwd, origin.url("/big-head?n=100000"))
    _assertProxyError(r, 502)


def test_unresolvableHostIs502(fwd):
    """A name that does not resolve: 502 naming the reason."""
    r = _get(fwd, "http://no-such-host.invalid/x", timeout=30)
    if r.status_code == 504:
        return  # a resolver slower than --connect-timeout: a timeout is right too
    _assertProxyError(r, 502)


def test_responseTimeoutIs504(proxyd, origin):
    """An origin that accepts but never answers: 504 once --idle-timeout passes."""
    d = proxyd("--idle-timeout", "2")
    t0 = time.monotonic()
    r = requests.get(origin.url("/slow-head"), proxies=d.proxies, timeout=20)
    assert time.monotonic() - t0 < 15
    _assertProxyError(r, 504)


def test_connectTimeoutIs504(proxyd):
    """An upstream whose connect never completes: 504 once --connect-timeout passes."""
    hole = Blackhole()
    try:
        d = proxyd("--connect-timeout", "1")
        t0 = time.monotonic()
        r = requests.get("http://127.0.0.1:%d/x" % hole.port, proxies=d.proxies, timeout=20)
        assert time.monotonic() - t0 < 10
        _assertProxyError(r, 504)
    finally:
        hole.close()


def test_truncatedResponseAbortsClientCurl(fwd, origin, curl):
    """Upstream dies mid-body (Content-Length): curl reports a failed transfer, not a complete body."""
    r = runCurl(curl, ["-x", fwd.url, origin.url("/truncated")], timeout=20)
    assert r.returncode in (18, 56), (r.returncode, r.stderr)
    assert len(r.stdout) < 1_000_000


def test_truncatedChunkedAbortsClientCurl(fwd, origin, curl):
    """Upstream dies mid-chunked-body: curl reports a failed transfer."""
    r = runCurl(curl, ["-x", fwd.url, origin.url("/truncated-chunked")], timeout=20)
    assert r.returncode in (18, 56), (r.returncode, r.stderr)


@pytest.mark.parametrize("path", ["/truncated", "/truncated-chunked"])
def test_truncatedResponseAbortsClientRequests(fwd, origin, path):
    """requests sees an error, never a complete body, when the upstream dies mid-body."""
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        with requests.get(origin.url(path), proxies=fwd.proxies, stream=True, timeout=20) as r:
            for _ in r.iter_content(65536):
                pass


def test_truncatedChunkedNeverTerminated(fwd, origin):
    """
    On the wire: a truncated chunked upstream body never gets a last-chunk
    from proxyd.  proxyd aborts the client connection, and the reset may
    reach the client before it has read the head (the kernel then drops
    what was unread): that, too, is a response that never ended.
    """
    with RawConnection(fwd.address, timeout=20) as c:
        _rawRequest(c, "GET", origin.url("/truncated-chunked"), authority=origin.authority)
        try:
            head = c.readHead()
        except ConnectionResetError:
            return
        rest = c.readUntilClose()
    assert head[1] == 200
    assert not rest.endswith(b"0\r\n\r\n"), rest[-50:]
    assert len(rest) < 1_000_000


def test_daemonStillServesAfterErrors(fwd, origin):
    """After all the error cases the shared daemon still serves and logged no traceback."""
    assert _get(fwd, origin.url("/hello")).content == HELLO
    assert fwd.running()
    assert "Traceback" not in fwd.logText()


# ---------------------------------------------------------------------------
# Access log


def _waitLines(path, n):
    def ready():
        try:
            lines = [l for l in path.read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            return None
        return lines if len(lines) >= n else None
    return waitFor(ready, timeout=10, message="%d access log lines in %s" % (n, path))


def _requestAndTunnel(d, origin, tunnelTarget):
    from tests.integration.origin import connectTunnel
    r = requests.get(origin.url("/bytes?n=12345"), proxies=d.proxies, timeout=10)
    assert r.status_code == 200
    conn, resp = connectTunnel(d.address, tunnelTarget.authority, extra=b"ECHO\nping")
    with conn:
        assert resp.status == 200
        assert conn.readExactly(4) == b"ping"
        conn.sock.shutdown(1)
        conn.readUntilClose()


def test_accessLogText(proxyd, origin, tunnelTarget, tmp_path):
    """--access-log: one text line per request and per tunnel with the fields users need."""
    log = tmp_path / "access.log"
    d = proxyd("--access-log", str(log), "--connect-ports", str(tunnelTarget.port))
    _requestAndTunnel(d, origin, tunnelTarget)
    lines = _waitLines(log, 2)
    assert len(lines) == 2, lines
    get, tunnel = lines
    assert "127.0.0.1" in get
    assert "GET" in get.split() or '"GET' in get
    assert origin.url("/bytes?n=12345") in get
    assert "200" in get.replace('"', " ").split()
    assert "127.0.0.1:%d" % origin.port in get
    assert "CONNECT" in tunnel
    assert tunnelTarget.authority in tunnel


def test_accessLogJson(proxyd, origin, tunnelTarget, tmp_path):
    """--log-format json: each access log line is one JSON object with the documented fields."""
    log = tmp_path / "access.json"
    d = proxyd("--access-log", str(log), "--log-format", "json",
               "--connect-ports", str(tunnelTarget.port))
    _requestAndTunnel(d, origin, tunnelTarget)
    lines = _waitLines(log, 2)
    assert len(lines) == 2, lines
    get, tunnel = [json.loads(l) for l in lines]
    for rec in (get, tunnel):
        for key in ("client", "method", "target", "status", "bytesIn", "bytesOut",
                    "duration", "upstream"):
            assert key in rec, (key, rec)
        assert "127.0.0.1" in str(rec["client"])
        assert isinstance(rec["duration"], (int, float)) and rec["duration"] >= 0
    assert get["method"] == "GET"
    assert get["status"] == 200
    assert origin.url("/bytes?n=12345") in get["target"]
    assert get["bytesOut"] >= 12345
    assert str(origin.port) in str(get["upstream"])
    assert tunnel["method"] == "CONNECT"
    assert tunnel["status"] == 200
    assert tunnelTarget.authority in tunnel["target"]
    assert tunnel["bytesIn"] >= len(b"ECHO\nping")
    assert tunnel["bytesOut"] >= 4
    assert str(tunnelTarget.port) in str(tunnel["upstream"])


def test_accessLogOneLinePerRequest(proxyd, origin, tmp_path):
    """Ten keep-alive requests give exactly ten lines."""
    log = tmp_path / "access.log"
    d = proxyd("--access-log", str(log))
    with RawConnection(d.address) as c:
        for i in range(10):
            _rawRequest(c, "GET", origin.url("/hello?i=%d" % i), authority=origin.authority)
            assert c.readResponse().status == 200
    lines = _waitLines(log, 10)
    assert len(lines) == 10, lines
