"""
mitm mode, black box: the real C{twistd -n proxyd --mode mitm} against
loopback origins, driven by clients that trust only proxyd's CA (curl,
requests, httpx, openssl s_client, Python's ssl module).

Covered: interception with curl/requests/httpx (host names and IP targets);
the leaf certificates (issuer, SAN, EKU, validity, shared key, cache, one
generation for concurrent first requests, RSA on request); a client that
does not trust the CA; upstream certificate failures as 502s naming the
reason (unknown issuer, name mismatch, expired) and --upstream-ca /
--upstream-insecure; passthrough; plain HTTP and other bytes after CONNECT;
100 MB down / 50 MB up with their sha256; WebSocket through interception;
the CA on disk (persistence, modes, refusal of a readable key, /ca.pem,
--ca-cert/--ca-key); garbage ClientHellos.

Every daemon gets its own --ca-dir (or --ca-cert/--ca-key), so nothing
here reads or writes ~/.proxyd.
"""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import random
import re
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
import uuid

import httpx
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.conftest import requireCommand, runCurl, tcpListener
from tests.integration.origin import (
    HELLO,
    OriginHandler,
    TLSOrigin,
    connectTunnel,
    makeCA,
    makeLeaf,
    patternChunks,
    patternSha256,
    privateKeyPEM,
)
from tests.polling import observe, procStatusKiB, waitFor

DOWNLOAD = 100 * 1024 * 1024
UPLOAD = 50 * 1024 * 1024
MAX_LEAF_DAYS = 397

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


# ---------------------------------------------------------------------------
# Certificates made here for the origins that must fail (and a CA of our own)


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _writeKey(path, key):
    path.write_bytes(privateKeyPEM(key))
    os.chmod(path, 0o600)


def makeOtherCertificates(directory):
    """
    A second throwaway CA (with its key, mode 0600) and two leaves it signs:
    C{mismatch} (only DNS:mismatch.invalid, no IP SANs) and C{expired}
    (localhost / 127.0.0.1, but expired five days ago).
    """
    now = _now()
    caName = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "proxyd mitm-test other CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests"),
    ])
    caKey, ca = makeCA(caName, now - datetime.timedelta(days=30), now + datetime.timedelta(days=30))
    paths = {"ca": directory / "other-ca.pem", "caKey": directory / "other-ca.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _writeKey(paths["caKey"], caKey)

    def leaf(label, cn, sans, notBefore, notAfter):
        key, cert = makeLeaf(caKey, caName, cn, sans, notBefore, notAfter)
        certPath = directory / ("%s.pem" % label)
        keyPath = directory / ("%s.key" % label)
        certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _writeKey(keyPath, key)
        paths[label] = {"cert": certPath, "key": keyPath}

    leaf("mismatch", "mismatch.invalid", [x509.DNSName("mismatch.invalid")],
         now - datetime.timedelta(days=1), now + datetime.timedelta(days=2))
    leaf("expired", "localhost",
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
         now - datetime.timedelta(days=10), now - datetime.timedelta(days=5))
    return paths


# ---------------------------------------------------------------------------
# A WebSocket echo behind TLS (RFC 6455, just enough for one test)

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _wsAccept(key):
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode()


def _wsFrame(opcode, payload, mask):
    head = bytes([0x80 | opcode])
    maskBit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([maskBit | n])
    elif n < 65536:
        head += bytes([maskBit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([maskBit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _wsMask(payload, key)


def _wsMask(payload, key):
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""


def _wsReadFrame(read):
    """(opcode, payload) of one frame; C{read(n)} returns exactly n bytes."""
    b0, b1 = read(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read(8))[0]
    key = read(4) if b1 & 0x80 else None
    payload = read(n)
    if key is not None:
        payload = _wsMask(payload, key)
    return b0 & 0x0F, payload


class WebSocketHandler(OriginHandler):
    """OriginHandler plus /ws: a WebSocket echo (text/binary echoed, close answered)."""

    def route_ws(self, path, query, head):
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._send(400, b"not a websocket handshake\n")
            return
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", _wsAccept(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True

        def read(n):
            data = self.rfile.read(n)
            if len(data) != n:
                raise ConnectionError("EOF in a frame")
            return data

        while True:
            opcode, payload = _wsReadFrame(read)
            if opcode == 8:
                self.wfile.write(_wsFrame(8, payload, mask=False))
                return
            self.wfile.write(_wsFrame(opcode, payload, mask=False))


# ---------------------------------------------------------------------------
# Helpers


def mitmArgs(caDir, *extra):
    return ["--mode", "mitm", "--connect-ports", "*", "--ca-dir", str(caDir)] + [str(a) for a in extra]


def startMitm(factory, caDir, *extra, **kw):
    """A mitm daemon whose CA lives in C{caDir}; C{.caPem}/C{.caDir} are set."""
    d = factory(*mitmArgs(caDir, *extra), **kw)
    d.caDir = caDir
    d.caPem = caDir / "ca.pem"
    waitFor(lambda: d.caPem.exists(), timeout=5, message="ca.pem")
    return d


def loadCert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def logLines(d):
    return [l for l in d.logText().splitlines() if l.strip()]


def session():
    s = requests.Session()
    s.trust_env = False  # never let NO_PROXY & co. bypass the proxy
    return s


def curlGet(curl, d, url, *extra, timeout=20):
    return runCurl(curl, ["-x", d.url] + [str(a) for a in extra] + [url], timeout=timeout)


def sClient(openssl, d, target, servername=None, caFile=None, verifyHost=None, timeout=15):
    """
    C{openssl s_client -proxy} through C{d} to C{target}; returns
    (CompletedProcess, [x509.Certificate, ...] as shown by -showcerts).
    C{servername=None} sends no SNI.
    """
    argv = [openssl, "s_client", "-proxy", "%s:%d" % d.address, "-connect", target, "-showcerts"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    if caFile is not None:
        argv += ["-CAfile", str(caFile), "-verify_return_error"]
    if verifyHost is not None:
        argv += ["-verify_hostname", verifyHost]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    return r, [x509.load_pem_x509_certificate(m) for m in _PEM_CERT.findall(r.stdout)]


def leafOf(openssl, d, target, servername=None):
    r, chain = sClient(openssl, d, target, servername)
    assert chain, "s_client showed no certificate (exit %d)\n%s\n%s" % (
        r.returncode, r.stdout.decode("latin-1")[-2000:], r.stderr.decode("latin-1")[-2000:])
    return chain[0]


def sans(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (ext.get_values_for_type(x509.DNSName),
            [str(a) for a in ext.get_values_for_type(x509.IPAddress)])


def spki(key):
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def checkLeaf(leaf, ca, dns=(), ips=()):
    """The fields SPEC.md asks of a leaf made for C{dns}/C{ips}, signed by C{ca}."""
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert sans(leaf) == (list(dns), list(ips))
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert not bc.ca
    except x509.ExtensionNotFound:
        pass
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=MAX_LEAF_DAYS), lifetime
    now = _now()
    assert leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
    assert ca.not_valid_before_utc <= leaf.not_valid_before_utc
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    assert spki(leaf.public_key()) != spki(ca.public_key())
    # A strict (webpki) verifier accepts it for the name asked for.
    from cryptography.x509 import verification
    verifier = verification.PolicyBuilder().store(verification.Store([ca]))
    subject = (verification.DNSName(dns[0]) if dns
               else verification.IPAddress(ipaddress.ip_address(ips[0])))
    verifier.build_server_verifier(subject).verify(leaf, [])


def clientContext(cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tlsThroughProxy(d, target, serverName, cafile, timeout=10.0):
    """CONNECT C{target} through C{d}, then a verifying TLS handshake for C{serverName}."""
    conn, resp = connectTunnel(d.address, target, timeout=timeout)
    assert resp.status == 200, resp
    assert conn.buf == b""
    tls = clientContext(cafile).wrap_socket(conn.sock, server_hostname=serverName)
    return tls


def vmHWM(pid):
    """Peak resident set size of C{pid}, in bytes."""
    return procStatusKiB(pid, "VmHWM") * 1024


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def openssl():
    return requireCommand("openssl")


@pytest.fixture(scope="module")
def otherCerts(tmp_path_factory):
    return makeOtherCertificates(tmp_path_factory.mktemp("othercerts"))


@pytest.fixture(scope="module")
def mismatchOrigin(otherCerts):
    s = TLSOrigin.start(otherCerts["mismatch"])
    yield s
    s.close()


@pytest.fixture(scope="module")
def expiredOrigin(otherCerts):
    s = TLSOrigin.start(otherCerts["expired"])
    yield s
    s.close()


@pytest.fixture(scope="module")
def wsOrigin(certs):
    s = TLSOrigin(certs)
    s.RequestHandlerClass = WebSocketHandler
    s.startThread()
    yield s
    s.close()


@pytest.fixture(scope="module")
def trustBundle(certs, otherCerts, tmp_path_factory):
    """--upstream-ca: the main test CA and the other CA, in one PEM file."""
    path = tmp_path_factory.mktemp("bundle") / "upstream-ca.pem"
    path.write_bytes(certs["ca"].read_bytes() + otherCerts["ca"].read_bytes())
    return path


@pytest.fixture(scope="module")
def mitm(moduleProxyd, trustBundle, tmp_path_factory):
    """The shared interceptor: trusts the test origins' CAs upstream."""
    caDir = tmp_path_factory.mktemp("mitm") / "ca"
    return startMitm(moduleProxyd, caDir, "--upstream-ca", trustBundle)


@pytest.fixture(scope="module")
def proxydCA(mitm):
    return loadCert(mitm.caPem)


def hostURL(server, path, host="localhost"):
    return "https://%s:%d%s" % (host, server.port, path)


# ---------------------------------------------------------------------------
# Interception with real clients


def test_curlThroughInterception(mitm, curl, tlsOrigin):
    """curl trusting only proxyd's CA gets the origin's body over an intercepted CONNECT."""
    r = curlGet(curl, mitm, hostURL(tlsOrigin, "/hello"), "--cacert", mitm.caPem)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_curlIPTarget(mitm, curl, tlsOrigin):
    """An IP-literal target (the origin's certificate has an IP SAN) is intercepted and verified."""
    r = curlGet(curl, mitm, hostURL(tlsOrigin, "/hello", "127.0.0.1"), "--cacert", mitm.caPem)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_requestsThroughInterception(mitm, tlsOrigin):
    """requests with verify=ca.pem; keep-alive inside one intercepted connection."""
    with session() as s:
        for i in range(3):
            r = s.get(hostURL(tlsOrigin, "/echo?i=%d" % i), proxies=mitm.proxies,
                      verify=str(mitm.caPem), timeout=15)
            assert r.status_code == 200, r.text
            assert r.json()["path"] == "/echo?i=%d" % i
        r = s.get(hostURL(tlsOrigin, "/chunked"), proxies=mitm.proxies,
                  verify=str(mitm.caPem), timeout=15)
        assert r.status_code == 200


def test_httpxThroughInterception(mitm, tlsOrigin):
    """httpx with verify=<context trusting ca.pem> and proxy=."""
    with httpx.Client(proxy=mitm.url, verify=clientContext(mitm.caPem),
                      trust_env=False, timeout=15) as c:
        r = c.get(hostURL(tlsOrigin, "/hello"))
        assert r.status_code == 200
        assert r.content == HELLO
        r = c.post(hostURL(tlsOrigin, "/upload"), content=b"x" * 12345)
        assert r.json() == {"sha256": hashlib.sha256(b"x" * 12345).hexdigest(), "length": 12345}


# ---------------------------------------------------------------------------
# The leaves


def test_leafFields(mitm, openssl, tlsOrigin, proxydCA):
    """s_client sees a leaf for DNS:localhost issued by proxyd's CA, serverAuth, <= 397 days."""
    r, chain = sClient(openssl, mitm, "localhost:%d" % tlsOrigin.port, "localhost",
                       caFile=mitm.caPem, verifyHost="localhost")
    assert chain, r.stderr
    assert b"Verify return code: 0 (ok)" in r.stdout, r.stdout[-1500:]
    leaf = chain[0]
    checkLeaf(leaf, proxydCA, dns=["localhost"])
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert leaf.serial_number > 0 and leaf.serial_number.bit_length() >= 64


def test_leafForIPTarget(mitm, openssl, tlsOrigin, proxydCA):
    """An IP target gets an IP SAN and no DNS SAN."""
    leaf = leafOf(openssl, mitm, "127.0.0.1:%d" % tlsOrigin.port)
    checkLeaf(leaf, proxydCA, ips=["127.0.0.1"])


def test_leafNameFromSNI(mitm, openssl, tlsOrigin, proxydCA):
    """The SNI names the leaf, not the CONNECT host."""
    leaf = leafOf(openssl, mitm, "127.0.0.1:%d" % tlsOrigin.port, "localhost")
    checkLeaf(leaf, proxydCA, dns=["localhost"])


def test_leafNameFromConnectHostWithoutSNI(mitm, openssl, tlsOrigin, proxydCA):
    """No SNI: the CONNECT host names the leaf."""
    leaf = leafOf(openssl, mitm, "localhost:%d" % tlsOrigin.port)
    checkLeaf(leaf, proxydCA, dns=["localhost"])


def test_leavesShareOneKeyAndAreCached(mitm, openssl, tlsOrigin, proxydCA):
    """Two hosts: same public key, not the CA's; the same host twice: the same serial."""
    a1 = leafOf(openssl, mitm, "localhost:%d" % tlsOrigin.port, "localhost")
    b = leafOf(openssl, mitm, "127.0.0.1:%d" % tlsOrigin.port)
    a2 = leafOf(openssl, mitm, "localhost:%d" % tlsOrigin.port, "localhost")
    assert sans(a1) != sans(b)
    assert spki(a1.public_key()) == spki(b.public_key())
    assert spki(a1.public_key()) != spki(proxydCA.public_key())
    assert a1.serial_number != b.serial_number
    assert a1.serial_number == a2.serial_number
    assert a1.fingerprint(hashes.SHA256()) == a2.fingerprint(hashes.SHA256())


def test_concurrentFirstRequestsShareOneLeaf(mitm, tlsOrigin, proxydCA):
    """Eight clients asking at once for a host never seen get the very same certificate."""
    name = "burst-%s.test" % uuid.uuid4().hex[:12]
    barrier = threading.Barrier(8)
    results, errors = [], []

    def one():
        try:
            conn, resp = connectTunnel(mitm.address, tlsOrigin.authority)
            assert resp.status == 200, resp
            barrier.wait(10)
            with clientContext(mitm.caPem).wrap_socket(conn.sock, server_hostname=name) as tls:
                results.append(tls.getpeercert(binary_form=True))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert len(results) == 8
    assert len(set(results)) == 1
    checkLeaf(x509.load_der_x509_certificate(results[0]), proxydCA, dns=[name])


def test_leafKeyRSA(proxyd, openssl, tlsOrigin, tmp_path):
    """--leaf-key rsa: leaves carry one RSA-2048 key."""
    d = startMitm(proxyd, tmp_path / "ca", "--leaf-key", "rsa")
    ca = loadCert(d.caPem)
    a = leafOf(openssl, d, "localhost:%d" % tlsOrigin.port, "localhost")
    b = leafOf(openssl, d, "127.0.0.1:%d" % tlsOrigin.port)
    checkLeaf(a, ca, dns=["localhost"])
    checkLeaf(b, ca, ips=["127.0.0.1"])
    assert isinstance(a.public_key(), rsa.RSAPublicKey)
    assert a.public_key().key_size == 2048
    assert spki(a.public_key()) == spki(b.public_key())


# ---------------------------------------------------------------------------
# A client that does not trust proxyd's CA


def test_clientNotTrustingCA(proxyd, curl, tlsOrigin, certs, tmp_path):
    """curl without --cacert fails (exit 60); one log line; the daemon keeps serving."""
    d = startMitm(proxyd, tmp_path / "ca", "--upstream-ca", certs["ca"])
    url = hostURL(tlsOrigin, "/hello")
    before = len(logLines(d))
    r = curlGet(curl, d, url)
    assert r.returncode == 60, (r.returncode, r.stderr)
    waitFor(lambda: len(logLines(d)) > before, timeout=5, message="a log line about the failed handshake")
    # Half a second for anything else it would log about this connection
    # (a second line ends the wait early; the check below then fails).
    observe(0.5, lambda: len(logLines(d)) > before + 1)
    new = logLines(d)[before:]
    assert len(new) == 1, new
    assert "localhost" in new[0] or "127.0.0.1" in new[0], new
    assert "Traceback" not in d.logText()
    r = curlGet(curl, d, url, "--cacert", d.caPem)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    assert d.running()


# ---------------------------------------------------------------------------
# Upstream certificate failures


def _get(d, url, cafile, timeout=15):
    with session() as s:
        return s.get(url, proxies=d.proxies, verify=str(cafile), timeout=timeout)


def _assertTextPlain502(r, *words):
    assert r.status_code == 502, (r.status_code, r.text)
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    body = r.text.lower()
    for w in words:
        assert w.lower() in body, (w, r.text)


def test_unknownIssuerThen502AndUpstreamCAFixes(proxyd, curl, tlsOrigin, certs, tmp_path):
    """No --upstream-ca: the test CA is unknown -> 502 naming it; with --upstream-ca -> 200."""
    d = startMitm(proxyd, tmp_path / "ca1")
    r = _get(d, hostURL(tlsOrigin, "/hello"), d.caPem)
    _assertTextPlain502(r, "issuer", "localhost")
    # curl sees the same 502 (its handshake with proxyd completed).
    r = curlGet(curl, d, hostURL(tlsOrigin, "/hello"), "--cacert", d.caPem,
                "-o", "/dev/null", "-w", "%{http_code}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"502"
    assert d.running()

    fixed = startMitm(proxyd, tmp_path / "ca2", "--upstream-ca", certs["ca"])
    r = _get(fixed, hostURL(tlsOrigin, "/hello"), fixed.caPem)
    assert r.status_code == 200
    assert r.content == HELLO


def test_nameMismatch502(mitm, mismatchOrigin):
    """The origin's certificate (trusted CA) is only for mismatch.invalid: 502 naming the mismatch."""
    r = _get(mitm, hostURL(mismatchOrigin, "/hello"), mitm.caPem)
    _assertTextPlain502(r, "mismatch", "localhost")


def test_nameMismatchForIPTarget502(mitm, mismatchOrigin):
    """The same certificate has no IP SAN: an IP target is a mismatch too."""
    r = _get(mitm, hostURL(mismatchOrigin, "/hello", "127.0.0.1"), mitm.caPem)
    _assertTextPlain502(r, "mismatch", "127.0.0.1")


def test_expiredUpstream502(mitm, expiredOrigin):
    """A trusted but expired origin certificate: 502 saying so."""
    r = _get(mitm, hostURL(expiredOrigin, "/hello"), mitm.caPem)
    _assertTextPlain502(r, "expired")


def test_upstreamInsecure(proxyd, tlsOrigin, mismatchOrigin, tmp_path):
    """--upstream-insecure: unverifiable origins answer 200; warnings at start and per connection."""
    d = startMitm(proxyd, tmp_path / "ca", "--upstream-insecure")

    def warnings():
        return [l for l in logLines(d) if "#warn" in l and "insecure" in l.lower()]

    atStart = len(waitFor(warnings, timeout=5, message="a start-up warning about --upstream-insecure"))
    for origin in (tlsOrigin, mismatchOrigin):
        r = _get(d, hostURL(origin, "/hello"), d.caPem)
        assert r.status_code == 200, r.text
        assert r.content == HELLO
    waitFor(lambda: len(warnings()) >= atStart + 2, timeout=5,
            message="a warning for each upstream connection made without verification")


# ---------------------------------------------------------------------------
# Passthrough


def test_passthrough(proxyd, curl, openssl, tlsOrigin, certs, tmp_path):
    """A --passthrough host is tunnelled blind: the client sees, and must trust, the origin's certificate."""
    d = startMitm(proxyd, tmp_path / "ca", "--passthrough", "*.example", "--passthrough", "localhost")
    url = hostURL(tlsOrigin, "/hello")
    r = curlGet(curl, d, url, "--cacert", certs["ca"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    r = curlGet(curl, d, url, "--cacert", d.caPem)
    assert r.returncode == 60, (r.returncode, r.stderr)

    originLeaf = loadCert(certs["cert"])
    seen = leafOf(openssl, d, "localhost:%d" % tlsOrigin.port, "localhost")
    assert seen == originLeaf
    # Matched on the SNI as well as on the CONNECT host.
    seen = leafOf(openssl, d, "127.0.0.1:%d" % tlsOrigin.port, "localhost")
    assert seen == originLeaf
    # A host that matches no pattern is still intercepted.
    seen = leafOf(openssl, d, "127.0.0.1:%d" % tlsOrigin.port)
    assert seen.issuer == loadCert(d.caPem).subject


# ---------------------------------------------------------------------------
# What a CONNECT carries when it is not TLS


def test_plainHTTPInsideConnect(mitm, curl, origin):
    """curl -p to an http:// URL: the HTTP inside the CONNECT is served."""
    tag = uuid.uuid4().hex
    r = runCurl(curl, ["-p", "-x", mitm.url, origin.url("/echo?id=%s" % tag)], timeout=20)
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)
    assert echo["method"] == "GET"
    assert echo["path"] == "/echo?id=%s" % tag
    r = runCurl(curl, ["-p", "-x", mitm.url, origin.url("/hello")], timeout=20)
    assert r.stdout == HELLO


def test_otherBytesTunnelledBlind(mitm, tunnelTarget):
    """Neither TLS nor HTTP after the CONNECT: a byte-exact relay, both ways, half-close too."""
    conn, resp = connectTunnel(mitm.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 200, resp
        conn.send(b"ECHO\n")
        for i in range(4):
            payload = bytes(range(256)) * (i + 1) + b"\x16\x03\x01\r\n\r\nGET / HTTP/1.1\r\n\x00"
            conn.send(payload)
            assert conn.readExactly(len(payload)) == payload

    n = 3 * 1024 * 1024 + 17
    conn, resp = connectTunnel(mitm.address, tunnelTarget.authority, timeout=20)
    with conn:
        assert resp.status == 200, resp
        conn.send(b"SHA\n")
        for c in patternChunks(n):
            conn.send(c)
        conn.sock.shutdown(socket.SHUT_WR)
        answer = conn.readUntilClose().decode().split()
        assert answer == [patternSha256(n), str(n)]


# ---------------------------------------------------------------------------
# Big bodies


def test_download100MB(mitm, tlsOrigin):
    """100 MB through interception keeps its sha256; proxyd's peak RSS does not grow with it."""
    hwm = vmHWM(mitm.pid)
    deadline = time.monotonic() + 45
    h = hashlib.sha256()
    n = 0
    with session() as s:
        r = s.get(hostURL(tlsOrigin, "/bytes?n=%d" % DOWNLOAD), proxies=mitm.proxies,
                  verify=str(mitm.caPem), stream=True, timeout=20)
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == DOWNLOAD
        for chunk in r.iter_content(256 * 1024):
            h.update(chunk)
            n += len(chunk)
            assert time.monotonic() < deadline, "download too slow: %d bytes in 45 s" % n
        r.close()
    assert n == DOWNLOAD
    assert h.hexdigest() == patternSha256(DOWNLOAD)
    growth = vmHWM(mitm.pid) - hwm
    assert growth < 48 * 1024 * 1024, "proxyd peak RSS grew by %d MiB" % (growth >> 20)


def test_upload50MB(mitm, tlsOrigin):
    """50 MB streamed up (chunked, from a generator) through interception keeps its sha256."""
    hwm = vmHWM(mitm.pid)
    deadline = time.monotonic() + 45

    def body():
        for c in patternChunks(UPLOAD):
            assert time.monotonic() < deadline, "upload too slow"
            yield bytes(c)

    with httpx.Client(proxy=mitm.url, verify=clientContext(mitm.caPem),
                      trust_env=False, timeout=20) as c:
        r = c.post(hostURL(tlsOrigin, "/upload"), content=body())
    assert r.status_code == 200, r.text
    assert r.json() == {"sha256": patternSha256(UPLOAD), "length": UPLOAD}
    growth = vmHWM(mitm.pid) - hwm
    assert growth < 48 * 1024 * 1024, "proxyd peak RSS grew by %d MiB" % (growth >> 20)


# ---------------------------------------------------------------------------
# WebSocket


def _webSocketSession(d, wsOrigin, size):
    """Upgrade through C{d}, echo a text and a C{size}-byte binary frame, close handshake."""
    tls = tlsThroughProxy(d, "localhost:%d" % wsOrigin.port, "localhost", d.caPem)
    tls.settimeout(10)
    buf = bytearray()

    def read(n):
        while len(buf) < n:
            data = tls.recv(65536)
            if not data:
                raise ConnectionError("closed after %d buffered bytes" % len(buf))
            buf.extend(data)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    with tls:
        key = base64.b64encode(os.urandom(16)).decode()
        tls.sendall((
            "GET /ws HTTP/1.1\r\nHost: localhost:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (wsOrigin.port, key)).encode())
        while b"\r\n\r\n" not in buf:
            data = tls.recv(65536)
            assert data, "closed before the 101"
            buf.extend(data)
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf[:] = rest
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "101", head
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        assert headers.get("upgrade", "").lower() == "websocket", head
        assert headers.get("sec-websocket-accept") == _wsAccept(key), head

        tls.sendall(_wsFrame(1, b"hello through proxyd", mask=True))
        assert _wsReadFrame(read) == (1, b"hello through proxyd")
        big = b"".join(bytes(c) for c in patternChunks(size))
        tls.sendall(_wsFrame(2, big, mask=True))
        assert _wsReadFrame(read) == (2, big)
        # The origin answers the close frame and closes at once (without a
        # TLS close_notify, as Python's ssl and many servers do): its last
        # frame must still reach the client.
        tls.sendall(_wsFrame(8, b"\x03\xe8", mask=True))
        try:
            frame = _wsReadFrame(read)
        except (ConnectionError, OSError) as e:
            raise AssertionError("the origin's close frame was lost (%s)" % e)
        assert frame == (8, b"\x03\xe8")


def test_webSocketEcho(mitm, wsOrigin):
    """
    After 101 the intercepted connection is a two-way relay: frames of
    several sizes round-trip and the close handshake completes.  Several
    sessions, because losing the origin's last frame is a race.
    """
    for size in (5, 1000, 70_000, 300_000, 2000, 10):
        _webSocketSession(mitm, wsOrigin, size)


# ---------------------------------------------------------------------------
# The CA on disk


def test_caPersistsAndIsPrivate(proxyd, curl, tlsOrigin, certs, tmp_path):
    """Made on first start (key 0600, dir 0700), reused after a restart, served at /ca.pem."""
    caDir = tmp_path / "ca"
    assert not caDir.exists()
    d1 = startMitm(proxyd, caDir, "--upstream-ca", certs["ca"])
    pem1 = d1.caPem.read_bytes()
    ca = x509.load_pem_x509_certificate(pem1)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.value.ca and bc.critical
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert stat.S_IMODE(os.stat(caDir / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(caDir).st_mode) == 0o700
    # In the CA's key file: a private key matching ca.pem.
    key = serialization.load_pem_private_key((caDir / "ca.key").read_bytes(), None)
    assert spki(key.public_key()) == spki(ca.public_key())

    with session() as s:
        r = s.get(d1.url + "/ca.pem", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0].strip() == "application/x-x509-ca-cert"
    assert r.content == pem1
    assert d1.stop() == 0

    d2 = startMitm(proxyd, caDir, "--upstream-ca", certs["ca"])
    pem2 = d2.caPem.read_bytes()
    assert x509.load_pem_x509_certificate(pem2).fingerprint(hashes.SHA256()) == \
        ca.fingerprint(hashes.SHA256())
    assert stat.S_IMODE(os.stat(caDir / "ca.key").st_mode) == 0o600
    with session() as s:
        assert s.get(d2.url + "/ca.pem", timeout=10).content == pem1
    # A client that trusted the CA before the restart still trusts the new leaves.
    saved = tmp_path / "trusted-before.pem"
    saved.write_bytes(pem1)
    r = curlGet(curl, d2, hostURL(tlsOrigin, "/hello"), "--cacert", saved)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_readableCAKeyRefused(proxyd, runTwistd, tmp_path):
    """ca.key made 0644: proxyd refuses to start, in one line naming the file, no traceback."""
    caDir = tmp_path / "ca"
    d = startMitm(proxyd, caDir)
    assert d.stop() == 0
    keyPath = caDir / "ca.key"
    os.chmod(keyPath, 0o644)
    listen, probe = tcpListener()
    res = runTwistd(["-n", "--pidfile=", "proxyd"] + mitmArgs(caDir) + ["--listen", listen],
                    timeout=10, probe=probe)
    assert not res.timedOut, res
    assert res.returncode != 0, res
    out = res.stdout + res.stderr
    assert "Traceback" not in out, res
    naming = [l for l in out.splitlines() if str(keyPath) in l]
    assert len(naming) == 1, res
    assert len(res.stderrLines) == 1, res
    assert stat.S_IMODE(os.stat(keyPath).st_mode) == 0o644  # not "fixed" behind the user's back


def test_caCertAndKeyGiven(proxyd, curl, tlsOrigin, certs, otherCerts):
    """--ca-cert/--ca-key: leaves are signed by that CA, which /ca.pem serves."""
    d = proxyd("--mode", "mitm", "--connect-ports", "*", "--upstream-ca", certs["ca"],
               "--ca-cert", otherCerts["ca"], "--ca-key", otherCerts["caKey"])
    r = curlGet(curl, d, hostURL(tlsOrigin, "/hello"), "--cacert", otherCerts["ca"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    with session() as s:
        assert s.get(d.url + "/ca.pem", timeout=10).content == otherCerts["ca"].read_bytes()


# ---------------------------------------------------------------------------
# Garbage where a ClientHello should be


_junk = random.Random(0xC1A0).randbytes(252)

GARBAGE_HELLOS = {
    "not-a-hello": b"\x16\x03\x01\x00\x08" + b"\xff" * 8,
    "short-hello": b"\x16\x03\x01\x00\x0a" + b"\x01\x00\x00\x06" + b"\x03\x03\xde\xad\xbe\xef",
    "junk-hello": b"\x16\x03\x01\x01\x00" + b"\x01\x00\x00\xfc" + _junk,
}


@pytest.mark.parametrize("name", sorted(GARBAGE_HELLOS))
def test_garbageClientHello(mitm, curl, tlsOrigin, name):
    """0x16 0x03 0x01 then junk: the connection is closed, nothing is sent, the daemon keeps serving."""
    conn, resp = connectTunnel(mitm.address, tlsOrigin.authority)
    with conn:
        assert resp.status == 200, resp
        conn.send(GARBAGE_HELLOS[name])
        assert conn.closedWithin(5), "still open 5 s after a garbage ClientHello"
        assert conn.buf == b"", conn.buf
    r = curlGet(curl, mitm, hostURL(tlsOrigin, "/hello"), "--cacert", mitm.caPem)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    assert mitm.running()


class _StallingOrigin:
    """
    Accepts every TCP connection; "silent" ones never speak TLS, "closing"
    ones close after the first bytes of the ClientHello.
    """

    def __init__(self, mode):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 60
        while not self.stopped and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.mode == "closing":
                conn.settimeout(5)
                try:
                    conn.recv(16)
                except OSError:
                    pass
                conn.close()
            else:
                self.held.append(conn)

    def close(self):
        self.stopped = True
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("mode,status,words", [
    ("silent", 504, ("tls handshake", "not done after 2s")),
    ("closing", 502, ("closed the connection during the tls handshake",)),
])
def test_upstreamHandshakeBoundedByConnectTimeout(proxyd, tmp_path, mode, status, words):
    """
    An origin that accepts TCP but never finishes TLS gives a 504 after
    --connect-timeout (not the 300 s idle timeout); one that closes during
    the handshake gives a 502 saying so; each is logged once.
    """
    origin = _StallingOrigin(mode)
    try:
        d = startMitm(proxyd, tmp_path / "ca", "--connect-timeout", "2")
        started = time.monotonic()
        r = _get(d, "https://localhost:%d/x" % origin.port, d.caPem, timeout=20)
        elapsed = time.monotonic() - started
        assert r.status_code == status, (r.status_code, r.text)
        body = r.text.lower()
        for w in words:
            assert w in body, (w, r.text)
        assert elapsed < 10, elapsed
        waitFor(lambda: words[0] in d.logText().lower(), 5)
        assert sum(words[0] in line.lower() for line in d.logText().splitlines()) == 1, d.logText()
        assert d.running()
    finally:
        origin.close()
