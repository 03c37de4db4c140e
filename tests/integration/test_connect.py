"""
CONNECT tunnels of the forward proxy: byte-exact, 200 only after the
upstream connection is up, early data, half-close, port policy, errors,
IPv6, TLS through the tunnel with curl, requests and httpx.
"""

import hashlib
import socket
import threading
import time
import uuid

import httpx
import pytest
import requests

from tests.integration.conftest import IPV6, needsIPv6, runCurl
from tests.integration.origin import (
    CHUNK,
    HELLO,
    Blackhole,
    RawConnection,
    connectTunnel,
    freePort,
    patternChunks,
    patternSha256,
)
from tests.polling import waitFor

BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def refusedPort():
    return freePort()


@pytest.fixture(scope="module")
def blackhole():
    b = Blackhole()
    yield b
    b.close()


@pytest.fixture(scope="module")
def tun(moduleProxyd, tunnelTarget, tlsOrigin, refusedPort, blackhole, request):
    ports = [tunnelTarget.port, tlsOrigin.port, refusedPort, blackhole.port]
    if IPV6:
        ports.append(request.getfixturevalue("tunnelTarget6").port)
    return moduleProxyd("--connect-ports", ",".join(map(str, ports)), "--connect-timeout", "2")


def _recvAll(conn, sink):
    """Drain a tunnel to EOF into sink, starting with whatever is buffered."""
    n = 0
    if conn.buf:
        sink(conn.buf)
        n += len(conn.buf)
        conn.buf = b""
    conn.sock.settimeout(60)
    while True:
        data = conn.sock.recv(4 * CHUNK)
        if not data:
            return n
        sink(data)
        n += len(data)


def test_tunnelEchoes(tun, tunnelTarget):
    """CONNECT gives '200 Connection established' and then a byte-exact two-way pipe."""
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 200, resp
        assert resp.reason.lower() == "connection established"
        conn.send(b"ECHO\n")
        for i in range(5):
            payload = bytes(range(256)) * (i + 1) + b"\r\n\r\n\x00"
            conn.send(payload)
            assert conn.readExactly(len(payload)) == payload


def test_earlyDataRelayed(tun, tunnelTarget):
    """Bytes sent in the same write as the CONNECT head are relayed, not lost."""
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority,
                               extra=b"ECHO\nearly bytes before the 200")
    with conn:
        assert resp.status == 200, resp
        assert conn.readExactly(len(b"early bytes before the 200")) == b"early bytes before the 200"


def test_earlyDataLargeRelayed(tun, tunnelTarget):
    """A large burst right after the CONNECT head (before reading the 200) is all relayed."""
    burst = b"".join(bytes(c) for c in patternChunks(300_000))
    conn = RawConnection(tun.address)
    with conn:
        conn.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nSHA\n" % (
            tunnelTarget.authority.encode(), tunnelTarget.authority.encode()) + burst)
        conn.sock.shutdown(socket.SHUT_WR)
        resp = conn.readResponse(method="CONNECT")
        assert resp.status == 200, resp
        answer = conn.readUntilClose()
    assert answer == ("%s %d\n" % (hashlib.sha256(burst).hexdigest(), len(burst))).encode()


def test_clientHalfClose(tun, tunnelTarget):
    """The client shuts its write half; the server sees EOF and its answer still arrives."""
    data = b"".join(bytes(c) for c in patternChunks(1_000_000))
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 200
        conn.send(b"SHA\n" + data)
        conn.sock.shutdown(socket.SHUT_WR)
        answer = conn.readUntilClose()
    assert answer == ("%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))).encode()


def test_serverHalfClose(tun, tunnelTarget):
    """The server shuts its write half; the client sees EOF and can still send to it."""
    token = uuid.uuid4().hex
    payload = b"after the server's EOF\n" * 1000
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority, extra=b"HALF %s\n" % token.encode())
    with conn:
        assert resp.status == 200
        assert conn.readExactly(4) == b"bye\n"
        assert conn.closedWithin(5), "client did not see the server's EOF"
        conn.send(payload)
        conn.sock.shutdown(socket.SHUT_WR)
        waitFor(lambda: token in tunnelTarget.results, timeout=10,
                message="the server to receive the client's bytes after its EOF")
    assert tunnelTarget.results[token] == (hashlib.sha256(payload).hexdigest(), len(payload))


def test_portNotAllowedIs403(tun, origin):
    """CONNECT to a port outside --connect-ports: 403."""
    conn, resp = connectTunnel(tun.address, origin.authority)
    with conn:
        assert resp.status == 403, resp


def test_defaultConnectPortsIs443Only(proxyd, tunnelTarget):
    """Without --connect-ports, CONNECT to any port but 443 is 403."""
    d = proxyd()
    conn, resp = connectTunnel(d.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 403, resp


def test_connectPortsRangeAndStar(proxyd, tunnelTarget):
    """--connect-ports accepts ranges and *."""
    p = tunnelTarget.port
    for spec in ("443,%d-%d" % (p - 1, p + 1), "*"):
        d = proxyd("--connect-ports", spec)
        conn, resp = connectTunnel(d.address, tunnelTarget.authority, extra=b"ECHO\nx")
        with conn:
            assert resp.status == 200, (spec, resp)
            assert conn.readExactly(1) == b"x"


def test_refusedIs502(tun, refusedPort):
    """CONNECT to a port where nothing listens: 502, never 200."""
    conn, resp = connectTunnel(tun.address, "127.0.0.1:%d" % refusedPort)
    with conn:
        assert resp.status == 502, resp
        assert b"refused" in resp.body.lower(), resp


def test_connectTimeoutIs504(tun, blackhole):
    """CONNECT to an address whose connect never completes: 504 after --connect-timeout, never 200."""
    t0 = time.monotonic()
    conn, resp = connectTunnel(tun.address, "127.0.0.1:%d" % blackhole.port, timeout=15)
    with conn:
        assert resp.status == 504, resp
    assert time.monotonic() - t0 < 12


def test_connectByName(tun, tunnelTarget):
    """CONNECT localhost:port resolves the name."""
    conn, resp = connectTunnel(tun.address, "localhost:%d" % tunnelTarget.port, extra=b"ECHO\nname")
    with conn:
        assert resp.status == 200, resp
        assert conn.readExactly(4) == b"name"


@needsIPv6
def test_connectIPv6Literal(tun, tunnelTarget6):
    """CONNECT [::1]:port reaches the IPv6 target."""
    conn, resp = connectTunnel(tun.address, tunnelTarget6.authority, extra=b"ECHO\nsix")
    with conn:
        assert resp.status == 200, resp
        assert conn.readExactly(3) == b"six"


def test_malformedConnectTargetIs400(tun):
    """CONNECT without a port, or with a bad one, is 400."""
    for target in (b"127.0.0.1", b"127.0.0.1:notaport", b"[::1", b"127.0.0.1:99999"):
        with RawConnection(tun.address) as c:
            c.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
            resp = c.readResponse(method="CONNECT")
            assert resp.status == 400, (target, resp)


@pytest.mark.slow
def test_bigDownloadThroughTunnel(tun, tunnelTarget):
    """200 MB from the server through a CONNECT tunnel keeps its sha256."""
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority, extra=b"SEND %d\n" % BIG)
    with conn:
        assert resp.status == 200
        h = hashlib.sha256()
        n = _recvAll(conn, h.update)
    assert n == BIG
    assert h.hexdigest() == patternSha256(BIG)


@pytest.mark.slow
def test_bigUploadThroughTunnel(tun, tunnelTarget):
    """200 MB to the server through a CONNECT tunnel keeps its sha256."""
    conn, resp = connectTunnel(tun.address, tunnelTarget.authority, extra=b"SHA\n", timeout=60)
    with conn:
        assert resp.status == 200
        for c in patternChunks(BIG):
            conn.sock.sendall(c)
        conn.sock.shutdown(socket.SHUT_WR)
        answer = conn.readUntilClose()
    assert answer == ("%s %d\n" % (patternSha256(BIG), BIG)).encode()


def test_manyTunnelsAtOnce(tun, tunnelTarget):
    """200 tunnels open at the same time all echo their own bytes."""
    conns = []
    try:
        for i in range(200):
            conn, resp = connectTunnel(tun.address, tunnelTarget.authority, extra=b"ECHO\n")
            conns.append(conn)
            assert resp.status == 200, (i, resp)
        for i, conn in enumerate(conns):
            conn.send(b"tunnel %05d\n" % i)
        for i, conn in enumerate(conns):
            assert conn.readExactly(13) == b"tunnel %05d\n" % i
    finally:
        for c in conns:
            c.close()


def test_tunnelIdleTimeout(proxyd, tunnelTarget):
    """A silent tunnel is closed after --idle-timeout."""
    d = proxyd("--connect-ports", str(tunnelTarget.port), "--idle-timeout", "2")
    conn, resp = connectTunnel(d.address, tunnelTarget.authority, extra=b"ECHO\n")
    with conn:
        assert resp.status == 200
        t0 = time.monotonic()
        assert conn.closedWithin(12), "idle tunnel not closed"
        assert time.monotonic() - t0 >= 1.0


def test_curlHttpsThroughTunnel(tun, tlsOrigin, certs, curl):
    """curl -p fetches an https:// URL through the tunnel, verifying the origin's certificate."""
    r = runCurl(curl, ["-p", "-x", tun.url, "--cacert", str(certs["ca"]),
                       tlsOrigin.url("/hello", host="localhost")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_curlHttpsViaProxyOption(tun, tlsOrigin, certs, curl):
    """curl -x with an https:// URL (CONNECT implied) also works, to an IP literal."""
    r = runCurl(curl, ["-x", tun.url, "--cacert", str(certs["ca"]),
                       tlsOrigin.url("/echo", host="127.0.0.1")])
    assert r.returncode == 0, r.stderr
    assert b'"method": "GET"' in r.stdout


def test_requestsHttpsThroughTunnel(tun, tlsOrigin, certs):
    """requests verifies and fetches an https:// URL through the tunnel."""
    r = requests.get(tlsOrigin.url("/bytes?n=1000000", host="localhost"), proxies=tun.proxies,
                     verify=str(certs["ca"]), timeout=15)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == patternSha256(1_000_000)


def test_httpxHttpsThroughTunnel(tun, tlsOrigin, certs):
    """httpx verifies and POSTs to an https:// URL through the tunnel."""
    import ssl
    ctx = ssl.create_default_context(cafile=str(certs["ca"]))
    with httpx.Client(proxy=tun.url, verify=ctx, timeout=15) as client:
        r = client.post(tlsOrigin.url("/echo", host="localhost"), content=b"x" * 70000)
    assert r.status_code == 200
    assert r.json()["bodyLength"] == 70000


def test_concurrentTunnelsAndRequests(tun, tunnelTarget, origin):
    """Tunnels and plain requests at the same time do not disturb each other."""
    errors = []

    def tunnelWorker():
        try:
            data = b"".join(bytes(c) for c in patternChunks(2_000_000))
            conn, resp = connectTunnel(tun.address, tunnelTarget.authority, extra=b"SHA\n")
            with conn:
                assert resp.status == 200
                conn.send(data)
                conn.sock.shutdown(socket.SHUT_WR)
                assert conn.readUntilClose() == (
                    "%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))).encode()
        except Exception as e:  # reported below
            errors.append(e)

    def requestWorker():
        try:
            for _ in range(10):
                r = requests.get(origin.url("/hello"), proxies=tun.proxies, timeout=15)
                assert r.content == HELLO
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=tunnelWorker) for _ in range(4)]
    threads += [threading.Thread(target=requestWorker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_noTracebacksLogged(tun):
    """After all the tunnel cases the shared daemon runs and has logged no traceback."""
    assert tun.running()
    assert "Traceback" not in tun.logText()
