"""
SIGTERM drains: nothing new is accepted, a download in flight completes,
an idle keep-alive client does not hold shutdown up, and the exit status
is 0 (what supervisors expect).
"""

import hashlib
import signal
import subprocess
import time

from tests.integration.origin import RawConnection, patternSha256
from tests.polling import waitFor


def test_downloadInFlightCompletes(proxyd, origin, curl, tmp_path):
    n = 3 * 1024 * 1024
    d = proxyd("--drain-timeout", "20")
    out = tmp_path / "body"
    proc = subprocess.Popen(
        [curl, "-sS", "--max-time", "30", "--limit-rate", "1M", "-x", d.url, "-o", str(out),
         origin.url("/bytes?n=%d" % (n,))],
        stderr=subprocess.PIPE,
    )
    try:
        waitFor(lambda: out.exists() and out.stat().st_size > 0, 10, message="the download to start")
        d.proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.stat().st_size == n
    assert hashlib.sha256(out.read_bytes()).hexdigest() == patternSha256(n)
    assert d.proc.wait(30) == 0, d.logText()
    assert "draining 1 connection" in d.logText()


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
