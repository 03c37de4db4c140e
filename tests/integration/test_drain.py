"""
SIGTERM drains: nothing new is accepted, a download in flight completes,
an idle keep-alive client does not hold shutdown up, and the exit status
is 0 (what supervisors expect).
"""

import hashlib
import signal
import socket
import time

from tests.integration.origin import RawConnection, patternSha256
from tests.polling import waitFor


def test_downloadInFlightCompletes(proxyd, origin):
    """
    SIGTERM while a download is in flight: it completes, whole, and the
    daemon exits 0.  The client reads nothing until after the signal, so
    with a body far larger than the socket buffers the proxy cannot have
    finished sending it by then (a rate-limited curl could not promise that:
    loopback buffers hold megabytes).
    """
    n = 64 * 1024 * 1024
    d = proxyd("--drain-timeout", "30")
    with socket.create_connection(d.address, timeout=30) as client:
        client.sendall(b"GET " + origin.url("/bytes?n=%d" % (n,)).encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        first = client.recv(65536)  # the head (and a little body): the response is under way
        assert first.startswith(b"HTTP/1.1 200 "), first[:100]
        d.proc.send_signal(signal.SIGTERM)
        waitFor(lambda: "draining 1 connection" in d.logText(), 10, message="the drain to begin")
        head, _, body = first.partition(b"\r\n\r\n")
        h = hashlib.sha256(body)
        received = len(body)
        while received < n:
            data = client.recv(1 << 20)
            if not data:
                break
            h.update(data)
            received += len(data)
    assert received == n
    assert h.hexdigest() == patternSha256(n)
    assert d.proc.wait(30) == 0, d.logText()


def test_idleKeepAliveDoesNotHoldShutdown(proxyd, origin):
    d = proxyd("--drain-timeout", "30")
    with RawConnection(d.address) as c:
        c.send(b"GET " + origin.url("/hello").encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.readResponse().status == 200
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0, d.logText()
        assert time.monotonic() - started < 2.0


def test_idleKeepAliveInsideInterceptionDoesNotHoldShutdown(proxyd, tlsOrigin, certs, tmp_path):
    """
    mitm: a client whose keep-alive connection sits idle inside an
    intercepted CONNECT (HTTP inside proxyd's TLS) does not hold the drain
    up either.
    """
    import requests

    caDir = tmp_path / "ca"
    d = proxyd("--mode", "mitm", "--ca-dir", caDir, "--connect-ports", "*",
               "--upstream-ca", certs["ca"], "--drain-timeout", "30")
    with requests.Session() as s:
        s.trust_env = False
        r = s.get("https://localhost:%d/hello" % tlsOrigin.port, proxies=d.proxies,
                  verify=str(caDir / "ca.pem"), timeout=15)
        assert r.status_code == 200
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0, d.logText()
        assert time.monotonic() - started < 2.0, d.logText()
