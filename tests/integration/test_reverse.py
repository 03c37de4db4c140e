"""
reverse mode, black box: the real C{twistd -n proxyd --mode=reverse} in
front of HTTP and HTTPS backends these tests start, driven by real clients
(curl --resolve, openssl s_client, Python's ssl/http.client) that trust
only a throwaway root CA made here.

Covered: SNI picks the certificate (exact, then wildcard, else the first
pair) and the whole chain is sent; TLS 1.0/1.1 and non-AEAD ciphers
refused, 1.2 and 1.3 served, --tls-min 1.3, ALPN http/1.1; mutual TLS with
--client-ca; start-up refusals in one line naming the file; round robin,
dead backends skipped, all dead -> 502, --route; X-Forwarded-* and
Forwarded set and client values dropped, Host unchanged; a pooled backend;
an HTTPS backend with --upstream-ca and a path prefix; SIGHUP reloads (good
and failing); the PROXY protocol; a 200 MB download; hostile clients and
backends; plugins.

The site leaves are signed by an intermediate and clients get only the
root, so a verified handshake proves the chain was sent whole.
"""

import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.integration.conftest import requireCommand, runCurl, tcpListener
from tests.integration.origin import (
    CHUNKED_BODY,
    HELLO,
    HTTPOrigin,
    TLSOrigin,
    certificatesPEM,
    freePort,
    makeCA,
    makeClientLeaf,
    makeIntermediateCA,
    makeLeaf,
    patternSha256,
    privateKeyPEM,
)
from tests.polling import observe, waitFor

DOWNLOAD = 200 * 1024 * 1024
HEADER_TIMEOUT = 2
IDLE_TIMEOUT = 5

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


# ---------------------------------------------------------------------------
# Certificates


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Site:
    """One --tls-cert/--tls-key pair on disk: C{cert} (leaf + intermediate), C{key}, and the C{leaf}."""

    def __init__(self, cert, key, leaf, privateKey):
        self.cert = cert
        self.key = key
        self.leaf = leaf
        self.privateKey = privateKey

    @property
    def serial(self):
        return self.leaf.serial_number


class PKI:
    """
    A root CA (the only anchor clients are given, C{rootPem}) and an
    intermediate that signs every site leaf; L{site} writes a pair whose
    cert file is the chain leaf first, then the intermediate.
    """

    def __init__(self, directory, label="reverse test"):
        self.dir = directory
        now = _now()
        self.notBefore = now - datetime.timedelta(days=1)
        self.notAfter = now + datetime.timedelta(days=30)
        self.rootName = _name("%s root" % label)
        self.rootKey, self.root = makeCA(self.rootName, self.notBefore, self.notAfter)
        self.interName = _name("%s intermediate" % label)
        self.interKey, self.inter = makeIntermediateCA(
            self.rootKey, self.rootName, self.interName, self.notBefore, self.notAfter)
        self.rootPem = directory / "root.pem"
        self.rootPem.write_bytes(certificatesPEM(self.root))

    def site(self, label, names, ips=(), notBefore=None, notAfter=None, password=None):
        sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        key, leaf = makeLeaf(self.interKey, self.interName, names[0], sans,
                             notBefore or self.notBefore, notAfter or self.notAfter)
        cert = self.dir / ("%s.pem" % label)
        keyPath = self.dir / ("%s.key" % label)
        cert.write_bytes(certificatesPEM(leaf, self.inter))
        if password is None:
            keyPath.write_bytes(privateKeyPEM(key))
        else:
            keyPath.write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password)))
        os.chmod(keyPath, 0o600)
        return Site(cert, keyPath, leaf, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("reversepki"))


@pytest.fixture(scope="module")
def sites(pki):
    """
    default: localhost, default.test, the routed names, 127.0.0.1 (the first pair);
    a: a.example.test and exact.wild.test (an exact name inside the wildcard's domain);
    wild: *.wild.test.
    """
    class Sites:
        default = pki.site("default", ["localhost", "default.test", "routed.test", "pool.test",
                                      "garbage.test"], ips=["127.0.0.1"])
        a = pki.site("a", ["a.example.test", "exact.wild.test"])
        wild = pki.site("wild", ["*.wild.test"])
    return Sites


def clientCA(directory, label):
    """A client CA (C{ca.pem}) and one client certificate it signs (C{cert}, C{key})."""
    now = _now()
    name = _name("%s client CA" % label)
    caKey, ca = makeCA(name, now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    key, cert = makeClientLeaf(caKey, name, "%s client" % label,
                               now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    paths = {"ca": directory / ("%s-ca.pem" % label),
             "cert": directory / ("%s-client.pem" % label),
             "key": directory / ("%s-client.key" % label)}
    paths["ca"].write_bytes(certificatesPEM(ca))
    paths["cert"].write_bytes(certificatesPEM(cert))
    paths["key"].write_bytes(privateKeyPEM(key))
    return paths


# ---------------------------------------------------------------------------
# Clients


def reverseArgs(pairs, upstreams, *extra):
    args = ["--mode", "reverse"]
    for site in pairs:
        args += ["--tls-cert", site.cert, "--tls-key", site.key]
    for url in upstreams:
        args += ["--upstream", url]
    return args + [str(a) for a in extra]


def clientContext(cafile, cert=None, minimum=None, maximum=None, alpn=("http/1.1",)):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(str(cert["cert"]), str(cert["key"]))
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class SiteConnection(http.client.HTTPSConnection):
    """
    An HTTPS connection to proxyd's listener at C{address} for the site
    C{name}: SNI, certificate check and Host say C{name}; no DNS.
    C{preamble} is sent in clear before the handshake (a PROXY header).
    """

    def __init__(self, address, name, context, timeout=15, preamble=b""):
        super().__init__(name, address[1], context=context, timeout=timeout)
        self.address = address
        self.preamble = preamble

    def connect(self):
        sock = socket.create_connection(self.address, self.timeout)
        if self.preamble:
            sock.sendall(self.preamble)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    def peerSerial(self):
        der = self.sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number


def fetch(d, name, path, cafile, headers=None, method="GET", body=None, **kw):
    """One request on a fresh connection: (status, [(name, value)], body)."""
    conn = SiteConnection(d.address, name, clientContext(cafile), **kw)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def header(headers, name):
    return [v for (k, v) in headers if k.lower() == name.lower()]


def echoed(body, name):
    """The values of request header C{name} as the /echo backend saw it."""
    return [v for (k, v) in json.loads(body)["headers"] if k.lower() == name.lower()]


def siteURL(d, name, path):
    return "https://%s:%d%s" % (name, d.port, path)


def curlSite(curl, d, name, path, cafile, *extra, timeout=20):
    """curl https://NAME:PORT/PATH, NAME resolved to proxyd's listener, trusting only C{cafile}."""
    return runCurl(curl, ["--resolve", "%s:%d:127.0.0.1" % (name, d.port), "--cacert", str(cafile)]
                   + [str(a) for a in extra] + [siteURL(d, name, path)], timeout=timeout)


def sClient(openssl, d, servername, *args, timeout=15):
    """
    C{openssl s_client -showcerts} to proxyd's listener; returns
    (CompletedProcess, [x509.Certificate, ...] as shown).  C{servername=None}
    sends no SNI.
    """
    argv = [openssl, "s_client", "-connect", "127.0.0.1:%d" % d.port, "-showcerts"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    r = subprocess.run(argv + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return r, [x509.load_pem_x509_certificate(m) for m in _PEM_CERT.findall(r.stdout)]


def _sClientText(r):
    return (r.stdout.decode("latin-1")[-2500:] + "\n--- stderr:\n" + r.stderr.decode("latin-1")[-2500:])


def handshakeFails(openssl, d, *args):
    """s_client with C{args} must fail its handshake, and not for a reason of its own."""
    r, chain = sClient(openssl, d, "localhost", *args)
    text = _sClientText(r)
    assert r.returncode != 0, "handshake succeeded:\n" + text
    assert not chain, text
    assert b"no protocols available" not in r.stderr, "the client refused on its own:\n" + text
    assert b"no cipher match" not in r.stderr, "the client refused on its own:\n" + text
    return r


def newSerial(d, name, cafile):
    """The serial of the leaf a new handshake for C{name} gets."""
    conn = SiteConnection(d.address, name, clientContext(cafile))
    try:
        conn.connect()
        return conn.peerSerial()
    finally:
        conn.close()


def logLines(d):
    return [l for l in d.logText().splitlines() if l.strip()]


def settledLog(d, window=0.3):
    """Wait (bounded) until the log has not grown for C{window} seconds; return its lines."""
    last = [-1]

    def unchanged():
        n = len(logLines(d))
        same = n == last[0]
        last[0] = n
        return same

    waitFor(unchanged, timeout=10, interval=window, message="proxyd's log to settle")
    return logLines(d)


def assertLoggedOnce(d, before, what):
    """Exactly one new log line since C{before} lines (waiting for it, then 0.5 s for any other)."""
    waitFor(lambda: len(logLines(d)) > before, timeout=10, message="a log line about " + what)
    observe(0.5, lambda: len(logLines(d)) > before + 1)
    new = logLines(d)[before:]
    assert len(new) == 1, "expected one line about %s, got %r" % (what, new)
    assert "Traceback" not in d.logText()
    return new[0]


# ---------------------------------------------------------------------------
# Shared daemons


@pytest.fixture(scope="session")
def openssl():
    return requireCommand("openssl")


@pytest.fixture(scope="module")
def routeOrigin():
    s = HTTPOrigin.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def poolOrigin():
    """Only test_keepAlivePooledToBackend sends here (Host pool.test), so its connection count is that test's."""
    s = HTTPOrigin.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def rev(moduleProxyd, sites, origin, routeOrigin, poolOrigin):
    """
    The shared reverse proxy: three pairs (default first), --upstream the
    session origin, routed.test and pool.test to their own origins.
    """
    return moduleProxyd(*reverseArgs(
        [sites.default, sites.a, sites.wild], [origin.url("")],
        "--route", "routed.test=" + routeOrigin.url(""),
        "--route", "pool.test=" + poolOrigin.url("")))


# ---------------------------------------------------------------------------
# SNI, chain, protocol versions, ciphers, ALPN

SNI_CASES = [
    ("a.example.test", "a"),
    ("A.Example.TEST", "a"),
    ("exact.wild.test", "a"),  # an exact name wins over the wildcard
    ("foo.wild.test", "wild"),
    ("unknown.test", "default"),
    (None, "default"),
]


@pytest.mark.parametrize("servername,expected", SNI_CASES, ids=[str(s) for s, _ in SNI_CASES])
def test_sniPicksCertificateAndSendsChain(rev, openssl, sites, pki, servername, expected):
    """s_client sees the leaf SNI selects, followed by its intermediate."""
    r, chain = sClient(openssl, rev, servername)
    assert chain, _sClientText(r)
    want = getattr(sites, expected).leaf
    assert chain[0].fingerprint(hashes.SHA256()) == want.fingerprint(hashes.SHA256()), (
        chain[0].subject, want.subject)
    assert len(chain) == 2, [c.subject for c in chain]
    assert chain[1].fingerprint(hashes.SHA256()) == pki.inter.fingerprint(hashes.SHA256())


@pytest.mark.parametrize("name", ["a.example.test", "foo.wild.test", "localhost"])
def test_curlVerifiesChainToRoot(rev, curl, pki, name):
    """curl trusting only the root verifies each site (the chain is complete) and gets the backend's body."""
    r = curlSite(curl, rev, name, "/hello", pki.rootPem)
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_tls11Refused(rev, openssl):
    """A TLS 1.1 handshake (which the client is allowed to make) fails."""
    handshakeFails(openssl, rev, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")


def test_tls10Refused(rev, openssl):
    handshakeFails(openssl, rev, "-tls1", "-cipher", "DEFAULT@SECLEVEL=0")


def test_nonAEADCipherRefused(rev, openssl):
    """TLS 1.2 with a CBC (non-AEAD) suite fails; the same handshake with a forward-secret GCM suite works."""
    handshakeFails(openssl, rev, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    r, chain = sClient(openssl, rev, "localhost", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert r.returncode == 0 and chain, _sClientText(r)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls12And13Served(rev, pki, version):
    v = getattr(ssl.TLSVersion, version)
    ctx = clientContext(pki.rootPem, minimum=v, maximum=v)
    conn = SiteConnection(rev.address, "localhost", ctx)
    try:
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == HELLO
        assert conn.sock.version() == version.replace("_", ".")
    finally:
        conn.close()


def test_alpnHttp11(rev, pki):
    """A client offering h2 and http/1.1 gets http/1.1."""
    conn = SiteConnection(rev.address, "localhost", clientContext(pki.rootPem, alpn=("h2", "http/1.1")))
    try:
        conn.connect()
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
    finally:
        conn.close()


@pytest.fixture(scope="module")
def httpsBackend(tmp_path_factory):
    """An HTTPS backend with its own CA: (TLSOrigin, paths)."""
    from tests.integration.origin import makeCertificates
    paths = makeCertificates(tmp_path_factory.mktemp("backendcerts"))
    s = TLSOrigin.start(paths)
    yield s, paths
    s.close()


@pytest.fixture(scope="module")
def tls13(moduleProxyd, sites, httpsBackend):
    """--tls-min 1.3, in front of an HTTPS backend named localhost with a path prefix /echo."""
    backend, paths = httpsBackend
    return moduleProxyd(*reverseArgs(
        [sites.default], ["https://localhost:%d/echo" % backend.port],
        "--tls-min", "1.3", "--upstream-ca", paths["ca"]))


def test_tlsMin13RefusesTls12(tls13, openssl, pki):
    handshakeFails(openssl, tls13, "-tls1_2")
    ctx = clientContext(pki.rootPem, maximum=ssl.TLSVersion.TLSv1_2)
    conn = SiteConnection(tls13.address, "localhost", ctx)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.connect()
    finally:
        conn.close()


def test_tlsMin13ServesTls13(tls13, openssl, pki):
    r, chain = sClient(openssl, tls13, "localhost", "-tls1_3")
    assert r.returncode == 0 and chain, _sClientText(r)
    status, headers, body = fetch(tls13, "localhost", "/hello", pki.rootPem)
    assert status == 200, body


def test_httpsBackendWithPathPrefix(tls13, pki):
    """--upstream https://localhost:P/echo verified with --upstream-ca: /sub?q=1 reaches it as /echo/sub?q=1."""
    status, headers, body = fetch(tls13, "localhost", "/sub?q=1", pki.rootPem)
    assert status == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/echo/sub?q=1", seen
    assert echoed(body, "X-Forwarded-Proto") == ["https"]


# ---------------------------------------------------------------------------
# Mutual TLS


@pytest.fixture(scope="module")
def clientCerts(tmp_path_factory):
    d = tmp_path_factory.mktemp("clientcerts")
    return {"good": clientCA(d, "good"), "other": clientCA(d, "other")}


@pytest.fixture(scope="module")
def mtls(moduleProxyd, sites, origin, clientCerts):
    return moduleProxyd(*reverseArgs([sites.default], [origin.url("")],
                                     "--client-ca", clientCerts["good"]["ca"]))


def test_clientCertFromClientCAAccepted(mtls, curl, pki, clientCerts):
    c = clientCerts["good"]
    r = curlSite(curl, mtls, "localhost", "/hello", pki.rootPem, "--cert", c["cert"], "--key", c["key"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


@pytest.mark.parametrize("which", [None, "other"], ids=["no-client-cert", "other-CA"])
def test_clientCertMissingOrFromOtherCARefused(mtls, curl, pki, clientCerts, origin, which):
    """No client certificate, or one from another CA: the handshake fails and nothing reaches the backend."""
    tag = uuid.uuid4().hex
    extra = []
    if which:
        extra = ["--cert", clientCerts[which]["cert"], "--key", clientCerts[which]["key"]]
    r = curlSite(curl, mtls, "localhost", "/hello?" + tag, pki.rootPem, *extra)
    assert r.returncode != 0, (r.returncode, r.stdout)
    assert r.returncode in (35, 56), (r.returncode, r.stderr)
    assert r.stdout == b""
    assert not any(tag in p for p in origin.paths())
    # Python's ssl, for the same: no HTTP response either.
    ctx = clientContext(pki.rootPem, cert=clientCerts[which] if which else None)
    conn = SiteConnection(mtls.address, "localhost", ctx)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        try:
            conn.request("GET", "/hello?" + tag)
            conn.getresponse()
        finally:
            conn.close()
    assert mtls.running()


# ---------------------------------------------------------------------------
# Start-up refusals


@pytest.fixture(scope="module")
def badFiles(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("badfiles")
    now = _now()
    other = pki.site("other", ["localhost"])
    expired = pki.site("expired", ["localhost"], notBefore=now - datetime.timedelta(days=10),
                       notAfter=now - datetime.timedelta(days=5))
    encrypted = pki.site("encrypted", ["localhost"], password=b"right passphrase")
    wrongPass = d / "wrong.pass"
    wrongPass.write_text("wrong passphrase\n")
    rightPass = d / "right.pass"
    rightPass.write_text("right passphrase\n")
    return {"other": other, "expired": expired, "encrypted": encrypted,
            "wrongPass": wrongPass, "rightPass": rightPass, "missing": d / "missing.pem"}


def _refusalCases():
    # (id, function(sites, bad) -> (cert, key, extra args, files one of which the line must name))
    return {
        "missing-cert": lambda s, b: (b["missing"], s.default.key, [], [b["missing"]]),
        "missing-key": lambda s, b: (s.default.cert, b["missing"], [], [b["missing"]]),
        "key-not-matching-cert": lambda s, b: (s.default.cert, b["other"].key, [],
                                               [s.default.cert, b["other"].key]),
        "expired-cert": lambda s, b: (b["expired"].cert, b["expired"].key, [], [b["expired"].cert]),
        "wrong-passphrase": lambda s, b: (b["encrypted"].cert, b["encrypted"].key,
                                          ["--tls-key-password-file", b["wrongPass"]],
                                          [b["encrypted"].key, b["wrongPass"]]),
        "encrypted-key-without-passphrase": lambda s, b: (b["encrypted"].cert, b["encrypted"].key, [],
                                                          [b["encrypted"].key]),
    }


def _assertOneLineNaming(r, names):
    assert not r.timedOut, "daemon started instead of refusing: %r" % (r,)
    assert r.returncode not in (0, None), r
    assert "Traceback" not in r.stdout + r.stderr, r
    assert len(r.stderrLines) == 1, "expected one stderr line, got %r" % (r,)
    assert any(str(n) in r.stderrLines[0] for n in names), (names, r.stderrLines[0])


@pytest.mark.parametrize("case", sorted(_refusalCases()))
def test_startupRefusalNamesFile(runTwistd, sites, badFiles, origin, case):
    """Each bad certificate/key set-up: one stderr line naming the file, exit non-zero."""
    cert, key, extra, names = _refusalCases()[case](sites, badFiles)
    desc, probe = tcpListener()
    argv = ["-n", "--pidfile=", "proxyd", "--mode", "reverse", "--listen", desc,
            "--tls-cert", cert, "--tls-key", key, "--upstream", origin.url("")] + extra
    r = runTwistd(argv, probe=probe)
    _assertOneLineNaming(r, names)


@pytest.mark.parametrize("missing", ["--upstream", "--tls-cert"])
def test_reverseWithoutRequiredOptionRefused(runTwistd, sites, origin, missing):
    desc, probe = tcpListener()
    argv = ["-n", "--pidfile=", "proxyd", "--mode", "reverse", "--listen", desc]
    if missing != "--tls-cert":
        argv += ["--tls-cert", sites.default.cert, "--tls-key", sites.default.key]
    if missing != "--upstream":
        argv += ["--upstream", origin.url("")]
    r = runTwistd(argv, probe=probe)
    _assertOneLineNaming(r, [missing])


def test_encryptedKeyWithPassphraseFileServes(proxyd, badFiles, origin, pki):
    """--tls-key-password-file with the right passphrase (a file ending in a newline): it starts and serves."""
    enc = badFiles["encrypted"]
    d = proxyd(*reverseArgs([enc], [origin.url("")], "--tls-key-password-file", badFiles["rightPass"]))
    status, headers, body = fetch(d, "localhost", "/hello", pki.rootPem)
    assert status == 200 and body == HELLO


# ---------------------------------------------------------------------------
# Backends


@pytest.fixture
def twoOrigins():
    a, b = HTTPOrigin.start(), HTTPOrigin.start()
    yield a, b
    a.close()
    b.close()


def test_roundRobin(proxyd, sites, pki, twoOrigins):
    """Ten requests over two backends (fresh client connections): five each."""
    a, b = twoOrigins
    d = proxyd(*reverseArgs([sites.default], [a.url(""), b.url("")]))
    for i in range(10):
        status, _, body = fetch(d, "localhost", "/hello?rr=%d" % i, pki.rootPem)
        assert status == 200 and body == HELLO
    assert (len(a.requests), len(b.requests)) == (5, 5)


def test_deadBackendSkipped(proxyd, sites, pki, twoOrigins):
    """A backend that refuses connections is skipped: every request answered, both live backends used."""
    a, b = twoOrigins
    dead = freePort()
    d = proxyd(*reverseArgs([sites.default], [a.url(""), "http://127.0.0.1:%d" % dead, b.url("")]))
    for i in range(12):
        status, _, body = fetch(d, "localhost", "/hello?skip=%d" % i, pki.rootPem)
        assert status == 200, (i, body)
        assert body == HELLO
    assert len(a.requests) + len(b.requests) == 12
    assert len(a.requests) >= 3 and len(b.requests) >= 3, (len(a.requests), len(b.requests))


def test_allBackendsDownIs502(proxyd, sites, pki):
    d = proxyd(*reverseArgs([sites.default], ["http://127.0.0.1:%d" % freePort(),
                                              "http://127.0.0.1:%d" % freePort()]))
    for _ in range(3):
        status, headers, body = fetch(d, "localhost", "/hello", pki.rootPem)
        assert status == 502, body
        assert header(headers, "Content-Type")[0].startswith("text/plain"), headers
    assert d.running()


def test_routeByHost(rev, curl, pki, origin, routeOrigin):
    """Host routed.test goes to its --route backend; other hosts to --upstream."""
    tag = uuid.uuid4().hex
    r = curlSite(curl, rev, "routed.test", "/echo?" + tag, pki.rootPem)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == "/echo?" + tag
    assert any(tag in p for p in routeOrigin.paths())
    assert not any(tag in p for p in origin.paths())
    tag2 = uuid.uuid4().hex
    r = curlSite(curl, rev, "a.example.test", "/echo?" + tag2, pki.rootPem)
    assert r.returncode == 0, r.stderr
    assert any(tag2 in p for p in origin.paths())
    assert not any(tag2 in p for p in routeOrigin.paths())


SPOOFED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "evil.test",
    "Forwarded": "for=6.6.6.6;proto=http;host=evil.test",
}


def _forwardedPairs(value):
    out = {}
    for part in value.split(";"):
        k, _, v = part.strip().partition("=")
        out[k.lower()] = v.strip('"')
    return out


def test_forwardedHeadersSetAndClientValuesDropped(rev, curl, pki):
    """The backend sees X-Forwarded-For/Proto/Host and Forwarded from the real client, once, no spoofed values."""
    extra = []
    for k, v in SPOOFED.items():
        extra += ["-H", "%s: %s" % (k, v)]
    r = curlSite(curl, rev, "a.example.test", "/echo", pki.rootPem, *extra)
    assert r.returncode == 0, r.stderr
    host = "a.example.test:%d" % rev.port
    assert echoed(r.stdout, "X-Forwarded-For") == ["127.0.0.1"]
    assert echoed(r.stdout, "X-Forwarded-Proto") == ["https"]
    assert echoed(r.stdout, "X-Forwarded-Host") == [host]
    fwd = echoed(r.stdout, "Forwarded")
    assert len(fwd) == 1 and "," not in fwd[0], fwd
    pairs = _forwardedPairs(fwd[0])
    assert (pairs.get("for"), pairs.get("proto"), pairs.get("host")) == ("127.0.0.1", "https", host), fwd
    assert "6.6.6.6" not in r.stdout.decode() and "evil.test" not in r.stdout.decode()


def test_hostReachesBackendUnchanged(rev, pki):
    status, _, body = fetch(rev, "a.example.test", "/echo", pki.rootPem)
    assert status == 200
    assert echoed(body, "Host") == ["a.example.test:%d" % rev.port]


def test_keepAlivePooledToBackend(rev, pki, poolOrigin):
    """50 sequential requests (25 on one keep-alive connection, 25 on fresh ones): far fewer backend connections."""
    ctx = clientContext(pki.rootPem)
    conn = SiteConnection(rev.address, "pool.test", ctx)
    try:
        for i in range(25):
            conn.request("GET", "/hello?ka=%d" % i)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == HELLO
    finally:
        conn.close()
    for i in range(25):
        status, _, body = fetch(rev, "pool.test", "/hello?fresh=%d" % i, pki.rootPem)
        assert status == 200 and body == HELLO
    assert len(poolOrigin.requests) == 50
    assert poolOrigin.connections <= 5, poolOrigin.connections


@pytest.mark.slow
def test_bigDownloadKeepsSha256(rev, pki):
    """200 MB through TLS termination, streamed: every byte, in order."""
    conn = SiteConnection(rev.address, "localhost", clientContext(pki.rootPem), timeout=60)
    h = hashlib.sha256()
    got = 0
    try:
        conn.request("GET", "/bytes?n=%d" % DOWNLOAD)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(DOWNLOAD)
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
    finally:
        conn.close()
    assert got == DOWNLOAD
    assert h.hexdigest() == patternSha256(DOWNLOAD)


def test_postBodyReachesBackend(rev, pki):
    body = os.urandom(300_000)
    status, _, resp = fetch(rev, "localhost", "/upload", pki.rootPem, method="POST", body=body)
    assert status == 200
    assert json.loads(resp) == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


def test_chunkedResponse(rev, pki):
    status, _, body = fetch(rev, "localhost", "/chunked", pki.rootPem)
    assert status == 200 and body == CHUNKED_BODY


# ---------------------------------------------------------------------------
# Plugins


def test_pluginAppliesInReverse(proxyd, sites, pki, origin):
    d = proxyd(*reverseArgs([sites.default], [origin.url("")],
                            "--plugin", "headers:set-request=X-Rev-Plugin:on,set-response=X-Rev-Seen:yes"))
    status, headers, body = fetch(d, "localhost", "/echo", pki.rootPem)
    assert status == 200
    assert echoed(body, "X-Rev-Plugin") == ["on"]
    assert header(headers, "X-Rev-Seen") == ["yes"]


# ---------------------------------------------------------------------------
# SIGHUP


def _replace(path, data):
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def reloadable(tmp_path, pki, proxyd, origin):
    """A daemon whose only pair lives in files the test rewrites: (daemon, cert path, key path, first site)."""
    first = pki.site("reload-1", ["localhost"], ips=["127.0.0.1"])
    certPath, keyPath = tmp_path / "live.pem", tmp_path / "live.key"
    certPath.write_bytes(first.cert.read_bytes())
    keyPath.write_bytes(first.key.read_bytes())
    os.chmod(keyPath, 0o600)
    d = proxyd("--mode", "reverse", "--tls-cert", certPath, "--tls-key", keyPath,
               "--upstream", origin.url(""))
    return d, certPath, keyPath, first


def test_sighupReloadsCertificates(reloadable, pki):
    """After new files and SIGHUP, new handshakes get the new leaf; a keep-alive connection from before still answers."""
    d, certPath, keyPath, first = reloadable
    assert newSerial(d, "localhost", pki.rootPem) == first.serial
    old = SiteConnection(d.address, "localhost", clientContext(pki.rootPem))
    try:
        old.request("GET", "/hello")
        resp = old.getresponse()
        assert resp.status == 200 and resp.read() == HELLO
        oldSock = old.sock

        second = pki.site("reload-2", ["localhost"], ips=["127.0.0.1"])
        _replace(keyPath, second.key.read_bytes())
        _replace(certPath, second.cert.read_bytes())
        d.proc.send_signal(signal.SIGHUP)
        waitFor(lambda: newSerial(d, "localhost", pki.rootPem) == second.serial, timeout=10,
                message="a new handshake to get the reloaded certificate")

        old.request("GET", "/hello?after-reload")
        resp = old.getresponse()
        assert resp.status == 200 and resp.read() == HELLO
        assert old.sock is oldSock and old.peerSerial() == first.serial
    finally:
        old.close()
    assert d.running()


def test_failedReloadKeepsCertificatesAndLogsOneLine(reloadable, pki, sites):
    """
    A reload whose key does not match, then one whose cert file is missing:
    the old leaf stays, the keep-alive connection answers, and each failure
    is one log line naming the file.
    """
    d, certPath, keyPath, first = reloadable

    def naming(before, *paths):
        return [l for l in logLines(d)[before:] if any(p.name in l for p in paths)]

    old = SiteConnection(d.address, "localhost", clientContext(pki.rootPem))
    try:
        old.request("GET", "/hello")
        assert old.getresponse().read() == HELLO
        for breakIt, paths in [
            (lambda: _replace(keyPath, sites.a.key.read_bytes()), (keyPath, certPath)),  # another site's key
            (lambda: certPath.unlink(), (certPath,)),
        ]:
            before = len(settledLog(d))
            breakIt()
            d.proc.send_signal(signal.SIGHUP)
            waitFor(lambda: naming(before, *paths), timeout=10,
                    message="a log line naming %s" % " or ".join(p.name for p in paths))
            observe(0.5, lambda: len(naming(before, *paths)) > 1)
            assert len(naming(before, *paths)) == 1, naming(before, *paths)
            assert newSerial(d, "localhost", pki.rootPem) == first.serial
            old.request("GET", "/hello?after-bad-reload")
            assert old.getresponse().read() == HELLO
            if keyPath.read_bytes() != first.key.read_bytes():
                _replace(keyPath, first.key.read_bytes())
    finally:
        old.close()
    assert d.running()
    assert "Traceback" not in d.logText()


def test_sighupReloadsBackends(tmp_path, sites, proxyd, origin, pki):
    """--upstream in the config file changed, SIGHUP: requests go to the new backend; a bad URL changes nothing."""
    conf = tmp_path / "proxyd.toml"
    conf.write_text('upstream = ["%s"]\n' % origin.url("/echo/one"))
    d = proxyd("--mode", "reverse", "--tls-cert", sites.default.cert, "--tls-key", sites.default.key,
               "--config", conf)

    def backendPath():
        status, _, body = fetch(d, "localhost", "/x", pki.rootPem)
        assert status == 200, body
        return json.loads(body)["path"]

    assert backendPath() == "/echo/one/x"
    _replace(conf, ('upstream = ["%s"]\n' % origin.url("/echo/two")).encode())
    d.proc.send_signal(signal.SIGHUP)
    waitFor(lambda: backendPath() == "/echo/two/x", timeout=10, message="the reloaded backend")
    before = len(settledLog(d))
    _replace(conf, b'upstream = ["ftp://127.0.0.1/"]\n')
    d.proc.send_signal(signal.SIGHUP)
    waitFor(lambda: [l for l in logLines(d)[before:] if "not reloaded" in l], timeout=10, message="the refusal")
    assert backendPath() == "/echo/two/x"
    assert d.running()


# ---------------------------------------------------------------------------
# PROXY protocol


def _proxyV1(src, srcPort, dst, dstPort):
    return b"PROXY TCP4 %s %s %d %d\r\n" % (src.encode(), dst.encode(), srcPort, dstPort)


def _proxyV2(src, srcPort, dst, dstPort):
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", srcPort, dstPort)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


@pytest.fixture(scope="module")
def haproxyRev(moduleProxyd, sites, origin):
    port = freePort()
    return moduleProxyd(
        *reverseArgs([sites.default], [origin.url("")], "--allow", "203.0.113.0/24", "--allow", "127.0.0.0/8"),
        listeners=[("haproxy:tcp:%d:interface=127.0.0.1" % port, ("127.0.0.1", port))])


@pytest.mark.parametrize("make", [_proxyV1, _proxyV2], ids=["v1", "v2"])
def test_proxyProtocolAddressInXForwardedFor(haproxyRev, pki, make):
    """The PROXY header's source address is the client the backend is told about."""
    pre = make("203.0.113.7", 40001, "127.0.0.1", haproxyRev.port)
    status, _, body = fetch(haproxyRev, "localhost", "/echo", pki.rootPem, preamble=pre)
    assert status == 200, body
    assert echoed(body, "X-Forwarded-For") == ["203.0.113.7"]
    assert _forwardedPairs(echoed(body, "Forwarded")[0]).get("for") == "203.0.113.7"


def test_proxyProtocolAddressCheckedAgainstAllow(haproxyRev, pki, origin):
    """A PROXY source outside --allow is refused; nothing reaches the backend."""
    tag = uuid.uuid4().hex
    pre = _proxyV1("198.51.100.9", 40002, "127.0.0.1", haproxyRev.port)
    try:
        status, _, body = fetch(haproxyRev, "localhost", "/echo?" + tag, pki.rootPem, preamble=pre)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        status = None
    assert status in (None, 403), (status, body)
    assert not any(tag in p for p in origin.paths())


# ---------------------------------------------------------------------------
# Hostile and broken peers


@pytest.fixture(scope="module")
def garbageBackend():
    from tests.integration.origin import GarbageServer
    s = GarbageServer.start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def hostile(moduleProxyd, sites, origin, garbageBackend):
    d = moduleProxyd(*reverseArgs(
        [sites.default], [origin.url("")], "--header-timeout", str(HEADER_TIMEOUT),
        "--idle-timeout", str(IDLE_TIMEOUT),
        "--route", "garbage.test=http://127.0.0.1:%d" % garbageBackend.port))
    return d


def _works(d, pki):
    status, _, body = fetch(d, "localhost", "/hello", pki.rootPem)
    assert status == 200 and body == HELLO


def test_plainHttpToTlsPort(hostile, pki):
    """Plain HTTP on the TLS port: no 200, a close; logged once; the next request works."""
    _works(hostile, pki)
    before = len(settledLog(hostile))
    with socket.create_connection(hostile.address, timeout=10) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        got = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
            assert len(got) < 65536
    assert b" 200 " not in got and HELLO not in got, got
    assertLoggedOnce(hostile, before, "plain HTTP on the TLS port")
    _works(hostile, pki)


def test_handshakeNeverFinishes(hostile, pki):
    """A client that sends half a ClientHello: others are served meanwhile; it is closed, logged once."""
    _works(hostile, pki)
    before = len(settledLog(hostile))
    s = socket.create_connection(hostile.address, timeout=IDLE_TIMEOUT + 10)
    try:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
        _works(hostile, pki)  # not disturbed
        try:
            data = s.recv(65536)  # bounded by the socket timeout
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            pytest.fail("proxyd did not close a stalled handshake within %ds" % (IDLE_TIMEOUT + 10))
        assert not data.startswith(b"\x16"), "a ServerHello for half a ClientHello?"
    finally:
        s.close()
    assertLoggedOnce(hostile, before, "the stalled handshake")
    _works(hostile, pki)


def test_clientResetMidResponse(hostile, pki):
    """A client that resets mid-download: logged once, the next request works."""
    _works(hostile, pki)
    before = len(settledLog(hostile))
    conn = SiteConnection(hostile.address, "localhost", clientContext(pki.rootPem))
    conn.request("GET", "/bytes?n=%d" % (100 * 1024 * 1024))
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read(500_000)
    raw = conn.sock
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socket.socket.close(raw)  # RST, no close_notify
    conn.close()
    assertLoggedOnce(hostile, before, "the client reset")
    _works(hostile, pki)


@pytest.mark.parametrize("path", ["/truncated", "/truncated-chunked"])
def test_backendDiesMidBody(hostile, curl, pki, path):
    """The backend dies mid-body: curl reports a failed transfer, never a complete body; logged once."""
    _works(hostile, pki)
    before = len(settledLog(hostile))
    r = curlSite(curl, hostile, "localhost", path, pki.rootPem)
    assert r.returncode in (18, 56), (r.returncode, r.stderr)
    assert len(r.stdout) < 1_000_000
    assertLoggedOnce(hostile, before, "the truncated backend response")
    _works(hostile, pki)


def test_garbageBackendIs502(hostile, curl, pki):
    _works(hostile, pki)
    before = len(settledLog(hostile))
    r = curlSite(curl, hostile, "garbage.test", "/x", pki.rootPem, "-w", "\n%{http_code}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit(b"\n", 1)[-1] == b"502", r.stdout
    assertLoggedOnce(hostile, before, "the garbage backend")
    _works(hostile, pki)


def test_hostileLeftNoTraceback(hostile, pki):
    _works(hostile, pki)
    assert hostile.running()
    assert "Traceback" not in hostile.logText()
