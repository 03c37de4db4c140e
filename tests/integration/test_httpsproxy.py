"""
An HTTPS proxy: in forward and mitm modes, --tls-cert/--tls-key make the
proxy port itself speak TLS.  Clients reach it as C{https://proxy.test:PORT}
(curl --proxy https://... --proxy-cacert, httpx with a proxy SSL context,
Python's ssl by hand) trusting only a CA made here for the proxy.

Covered: plain http:// requests and CONNECT tunnels over the TLS session
(the CONNECT target is never the name the client used for the proxy), the
proxy's own pages, plain TCP refused on the TLS port, proxy auth over TLS,
and interception (mitm) through an HTTPS proxy port.
"""

import datetime
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import uuid

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.integration.conftest import runCurl
from tests.integration.origin import (
    HELLO,
    RawConnection,
    certificatesPEM,
    makeCA,
    makeLeaf,
    privateKeyPEM,
)
from tests.polling import waitFor

PROXY_NAME = "proxy.test"


@pytest.fixture(scope="module")
def proxyCerts(tmp_path_factory):
    """A CA of the proxy's own (not the origins') and a leaf for proxy.test, localhost, 127.0.0.1."""
    d = tmp_path_factory.mktemp("httpsproxy")
    now = datetime.datetime.now(datetime.timezone.utc)
    nb, na = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "https proxy test CA")])
    caKey, ca = makeCA(caName, nb, na)
    sans = [x509.DNSName(PROXY_NAME), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    key, leaf = makeLeaf(caKey, caName, PROXY_NAME, sans, nb, na)
    paths = {"ca": d / "proxy-ca.pem", "cert": d / "proxy.pem", "key": d / "proxy.key"}
    paths["ca"].write_bytes(certificatesPEM(ca))
    paths["cert"].write_bytes(certificatesPEM(leaf))
    paths["key"].write_bytes(privateKeyPEM(key))
    os.chmod(paths["key"], 0o600)
    return paths


def tlsArgs(proxyCerts, *extra):
    return ["--tls-cert", proxyCerts["cert"], "--tls-key", proxyCerts["key"],
            "--connect-ports", "*"] + [str(a) for a in extra]


@pytest.fixture(scope="module")
def tlsProxy(moduleProxyd, proxyCerts):
    """A forward proxy whose port speaks TLS."""
    return moduleProxyd(*tlsArgs(proxyCerts))


@pytest.fixture(scope="module")
def authProxy(moduleProxyd, proxyCerts):
    return moduleProxyd(*tlsArgs(proxyCerts, "--proxy-auth", "user:s3cret"))


@pytest.fixture(scope="module")
def mitmProxy(moduleProxyd, proxyCerts, certs):
    """mitm with an HTTPS proxy port; its CA is created in $PROXYD_HOME."""
    d = moduleProxyd(*tlsArgs(proxyCerts, "--mode", "mitm", "--upstream-ca", certs["ca"]))
    d.caPem = d.workdir / "home" / "ca.pem"
    waitFor(lambda: d.caPem.exists(), timeout=5, message="the mitm CA in $PROXYD_HOME")
    return d


def curlVia(curl, d, proxyCerts, url, *extra, timeout=20):
    """curl URL through https://proxy.test:PORT (resolved to the daemon), trusting the proxy's CA."""
    return runCurl(curl, [
        "--resolve", "%s:%d:127.0.0.1" % (PROXY_NAME, d.port),
        "--proxy", "https://%s:%d" % (PROXY_NAME, d.port),
        "--proxy-cacert", str(proxyCerts["ca"]),
    ] + [str(a) for a in extra] + [url], timeout=timeout)


def proxyTLS(d, proxyCerts, timeout=10):
    """A TLS connection to the proxy port, SNI proxy.test, verified against the proxy's CA."""
    ctx = ssl.create_default_context(cafile=str(proxyCerts["ca"]))
    sock = socket.create_connection(d.address, timeout=timeout)
    return ctx.wrap_socket(sock, server_hostname=PROXY_NAME)


def _readHead(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def hostURL(server, path, host="localhost"):
    return "https://%s:%d%s" % (host, server.port, path)


# ---------------------------------------------------------------------------
# forward


def test_plainHttpThroughHttpsProxy(tlsProxy, curl, proxyCerts, origin):
    """An http:// URL sent to the proxy over TLS is relayed."""
    tag = uuid.uuid4().hex
    r = curlVia(curl, tlsProxy, proxyCerts, origin.url("/echo?" + tag))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "/echo?" + tag
    assert any(tag in p for p in origin.paths())


def test_connectThroughHttpsProxy(tlsProxy, curl, proxyCerts, tlsOrigin, certs):
    """An https:// URL: CONNECT localhost:PORT inside the TLS session made for proxy.test."""
    r = curlVia(curl, tlsProxy, proxyCerts, hostURL(tlsOrigin, "/hello"), "--cacert", certs["ca"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_connectTargetDiffersFromSNI(tlsProxy, proxyCerts, tunnelTarget):
    """By hand: SNI proxy.test, then CONNECT 127.0.0.1:PORT; the tunnel carries bytes exactly."""
    with proxyTLS(tlsProxy, proxyCerts) as s:
        target = tunnelTarget.authority.encode()
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
        head, rest = _readHead(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert rest == b""
        payload = os.urandom(200_000)
        s.sendall(b"ECHO\n" + payload)
        got = b""
        while len(got) < len(payload):
            more = s.recv(65536)
            assert more, "tunnel closed after %d bytes" % len(got)
            got += more
        assert got == payload


def test_httpxThroughHttpsProxy(tlsProxy, proxyCerts, origin, tlsOrigin, certs):
    """httpx with an HTTPS proxy (its own SSL context): plain and CONNECT'ed requests."""
    proxyCtx = ssl.create_default_context(cafile=str(proxyCerts["ca"]))
    proxy = httpx.Proxy("https://localhost:%d" % tlsProxy.port, ssl_context=proxyCtx)
    with httpx.Client(proxy=proxy, verify=ssl.create_default_context(cafile=str(certs["ca"])),
                      trust_env=False, timeout=15) as c:
        r = c.get(origin.url("/hello"))
        assert r.status_code == 200 and r.content == HELLO
        r = c.post(hostURL(tlsOrigin, "/upload"), content=b"y" * 54321)
        assert r.json() == {"sha256": hashlib.sha256(b"y" * 54321).hexdigest(), "length": 54321}


def test_ownPagesOverTls(tlsProxy, curl, proxyCerts):
    """https://proxy.test:PORT/healthz is the proxy's own page."""
    r = runCurl(curl, ["--resolve", "%s:%d:127.0.0.1" % (PROXY_NAME, tlsProxy.port),
                       "--cacert", str(proxyCerts["ca"]),
                       "https://%s:%d/healthz" % (PROXY_NAME, tlsProxy.port)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"ok"


def test_plainTcpNotServedOnTlsPort(tlsProxy, proxyCerts, origin):
    """A cleartext proxy request to the TLS port is not relayed, and the daemon serves on."""
    tag = uuid.uuid4().hex
    with RawConnection(tlsProxy.address, timeout=10) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
            origin.url("/hello?" + tag).encode(), origin.authority.encode()))
        assert c.closedWithin(10)
        assert HELLO not in c.buf and b" 200 " not in c.buf, c.buf
    assert not any(tag in p for p in origin.paths())
    with proxyTLS(tlsProxy, proxyCerts) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n")
        head, _ = _readHead(s)
        assert head.startswith(b"HTTP/1.1 200"), head


# ---------------------------------------------------------------------------
# Proxy auth over TLS


def test_proxyAuthOverTls(authProxy, curl, proxyCerts, origin, tlsOrigin, certs):
    """--proxy-auth over the TLS port: 407 without credentials (plain and CONNECT), 200 with them."""
    r = curlVia(curl, authProxy, proxyCerts, origin.url("/hello"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"407"
    r = curlVia(curl, authProxy, proxyCerts, hostURL(tlsOrigin, "/hello"), "--cacert", certs["ca"],
                "-w", "%{http_connect}")
    assert r.returncode != 0
    assert r.stdout.endswith(b"407"), (r.stdout, r.stderr)

    r = curlVia(curl, authProxy, proxyCerts, origin.url("/hello"), "--proxy-user", "user:s3cret")
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    r = curlVia(curl, authProxy, proxyCerts, hostURL(tlsOrigin, "/hello"), "--cacert", certs["ca"],
                "--proxy-user", "user:s3cret")
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    r = curlVia(curl, authProxy, proxyCerts, origin.url("/hello"), "--proxy-user", "user:wrong",
                "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"407"


# ---------------------------------------------------------------------------
# mitm over an HTTPS proxy port


def test_mitmOverHttpsProxy(mitmProxy, curl, proxyCerts, tlsOrigin, certs):
    """curl trusts the proxy's CA for the proxy and only proxyd's mitm CA for the target: interception works."""
    r = curlVia(curl, mitmProxy, proxyCerts, hostURL(tlsOrigin, "/echo?mitm"),
                "--cacert", mitmProxy.caPem)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "/echo?mitm"
    # The origin's own CA does not verify what curl got: it was proxyd's leaf.
    # (curl 7.88 reports a verify failure inside an HTTPS proxy as 35, not 60.)
    r = curlVia(curl, mitmProxy, proxyCerts, hostURL(tlsOrigin, "/hello"), "--cacert", certs["ca"])
    assert r.returncode in (35, 60), (r.returncode, r.stderr)
    assert r.stdout == b""


def test_mitmPlainHttpOverHttpsProxy(mitmProxy, curl, proxyCerts, origin):
    r = curlVia(curl, mitmProxy, proxyCerts, origin.url("/hello"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


# ---------------------------------------------------------------------------
# After all of the above


@pytest.mark.parametrize("which", ["tlsProxy", "authProxy", "mitmProxy"])
def test_noTracebackInLog(request, which):
    """The shared daemons are still up and logged no traceback (refusals and closes included)."""
    d = request.getfixturevalue(which)
    assert d.running()
    assert "Traceback" not in d.logText()
