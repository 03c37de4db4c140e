"""
The listener's TLS: every refusal of a bad file is one line naming it,
SNI picks certificates by RFC 6125 rules, and real handshakes in memory
(two OpenSSL connections trading bytes through memory BIOs, no sockets)
show the chain, the TLS floor, ALPN, client certificates and reload.
"""

import datetime
import types

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl as tssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient

from proxyd.tlsserver import CertKeyPair, ServerTLS, SNIMap, TLSConfigError, loadPair, readPasswords

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
PASSPHRASE = b"correct horse"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn, key, issuer=None, names=(), ca=False, notBefore=NOW - DAY, notAfter=NOW + 30 * DAY):
    """A certificate for C{key}, signed by C{issuer} (a (cert, key) pair) or by itself."""
    issuerName, issuerKey = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


def _pem(obj, passphrase=None):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class PKI:
    """A throwaway CA and every certificate the tests need, written once per module."""

    def __init__(self, directory):
        self.dir = directory
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
        caKey, interKey, self.aKey, self.wildKey, oldKey, clientKey, otherKey, otherClientKey = keys
        self.ca = _cert("Test CA", caKey, ca=True)
        ca = (self.ca, caKey)
        self.inter = _cert("Test Intermediate", interKey, ca, ca=True)
        self.a = _cert("a.example", self.aKey, (self.inter, interKey), names=["a.example", "www.a.example"])
        self.wild = _cert("wild", self.wildKey, ca, names=["*.wild.example"])
        expired = _cert("old.example", oldKey, ca, names=["old.example"], notBefore=NOW - 60 * DAY, notAfter=NOW - 30 * DAY)
        future = _cert("new.example", oldKey, ca, names=["new.example"], notBefore=NOW + 30 * DAY, notAfter=NOW + 60 * DAY)
        legacy = _cert("Legacy.Example", oldKey, ca)
        other = _cert("Other CA", otherKey, ca=True)
        self.client = (_cert("client", clientKey, ca), clientKey)
        self.otherClient = (_cert("client", otherClientKey, (other, otherKey)), otherClientKey)

        self.aChain = self.write("a.pem", _pem(self.a), _pem(self.inter))
        self.aKeyFile = self.write("a.key", _pem(self.aKey))
        self.aKeyEncrypted = self.write("a-encrypted.key", _pem(self.aKey, PASSPHRASE))
        self.wildCert = self.write("wild.pem", _pem(self.wild))
        self.wildKeyFile = self.write("wild.key", _pem(self.wildKey))
        self.expired = self.write("expired.pem", _pem(expired))
        self.future = self.write("future.pem", _pem(future))
        self.legacy = self.write("legacy.pem", _pem(legacy))
        self.oldKey = self.write("old.key", _pem(oldKey))
        self.caFile = self.write("ca.pem", _pem(self.ca))
        self.garbage = self.write("garbage.pem", b"\x30\x82\x01\x0a not PEM at all")
        self.passwords = self.write("passwords", b"wrong one\r\n\n" + PASSPHRASE + b"\n")
        self.missing = str(directory / "missing.pem")

    def write(self, name, *parts):
        path = self.dir / name
        path.write_bytes(b"".join(parts))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sites(pki):
    """The usual listener: a.example (the default, with its chain) and *.wild.example."""
    return ServerTLS.fromFiles([(pki.aChain, pki.aKeyFile), (pki.wildCert, pki.wildKeyFile)])


# Loading: every refusal is one line that names the file.


def refusal(call, *args, **kwargs):
    with pytest.raises(TLSConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loadPair(pki):
    """A good pair gives the leaf, its chain in file order, its names and expiry."""
    pair = loadPair(pki.aChain, pki.aKeyFile)
    assert isinstance(pair, CertKeyPair)
    assert (pair.certPath, pair.keyPath) == (pki.aChain, pki.aKeyFile)
    assert pair.certificate == pki.a
    assert pair.chain == [pki.inter]
    assert pair.names == ("a.example", "www.a.example")
    assert pair.notAfter == pki.a.not_valid_after_utc


def test_namesFromCommonNameWithoutSAN(pki):
    """A certificate with no subjectAltName is served under its CN, lower-cased."""
    assert loadPair(pki.legacy, pki.oldKey).names == ("legacy.example",)


def test_combinedFile(pki):
    """One file holding certificate and key serves as both, as in nginx and HAProxy."""
    both = pki.write("both.pem", _pem(pki.wild), _pem(pki.wildKey))
    assert loadPair(both, both).names == ("*.wild.example",)


def test_missingCertFile(pki):
    message = refusal(loadPair, pki.missing, pki.aKeyFile)
    assert message.startswith(f"--tls-cert {pki.missing}: cannot read:")


def test_missingKeyFile(pki):
    message = refusal(loadPair, pki.aChain, pki.missing)
    assert message.startswith(f"--tls-key {pki.missing}: cannot read:")


def test_certNotPEM(pki):
    message = refusal(loadPair, pki.garbage, pki.aKeyFile)
    assert message.startswith(f"--tls-cert {pki.garbage}: not a PEM file")


def test_noCertificateInCertFile(pki):
    """A key given where the certificate belongs (the two swapped) is named as such."""
    message = refusal(loadPair, pki.aKeyFile, pki.aChain)
    assert message.startswith(f"--tls-cert {pki.aKeyFile}: no certificate in it")


def test_malformedCertificate(pki):
    bad = pki.write("bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert refusal(loadPair, bad, pki.aKeyFile) == f"--tls-cert {bad}: certificate 1 in the file is malformed"


def test_noPrivateKeyInKeyFile(pki):
    message = refusal(loadPair, pki.aChain, pki.aChain)
    assert message.startswith(f"--tls-key {pki.aChain}: no private key in it")


def test_malformedKey(pki):
    bad = pki.write("bad.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert refusal(loadPair, pki.aChain, bad) == f"--tls-key {bad}: the private key is malformed"


@pytest.mark.parametrize("passwords", [(), (b"wrong",)])
def test_encryptedKeyWithoutRightPassphrase(pki, passwords):
    message = refusal(loadPair, pki.aChain, pki.aKeyEncrypted, passwords)
    assert message == (
        f"--tls-key {pki.aKeyEncrypted}: is encrypted: wrong or missing passphrase (--tls-key-password-file)"
    )


def test_encryptedKeyPassphrasesTriedInTurn(pki):
    """The password file's lines are tried in turn; CRLF and blank lines do not get in the way."""
    passwords = readPasswords(pki.passwords)
    assert passwords == (b"wrong one", PASSPHRASE)
    assert loadPair(pki.aChain, pki.aKeyEncrypted, passwords).key.private_numbers() == pki.aKey.private_numbers()


def test_passphraseForPlainKeyIsHarmless(pki):
    """A password file shared by several pairs does not break an unencrypted key."""
    assert loadPair(pki.aChain, pki.aKeyFile, (b"x",)).names


def test_passwordFileErrors(pki):
    assert refusal(readPasswords, pki.missing).startswith(f"--tls-key-password-file {pki.missing}: cannot read:")
    empty = pki.write("empty", b"\n\n")
    assert refusal(readPasswords, empty) == f"--tls-key-password-file {empty}: no passphrase in it"


def test_keyDoesNotMatch(pki):
    message = refusal(loadPair, pki.aChain, pki.wildKeyFile)
    assert message == f"--tls-key {pki.wildKeyFile}: does not match the certificate in {pki.aChain}"


def test_expired(pki):
    when = (NOW - 30 * DAY).strftime("%Y-%m-%d %H:%M UTC")
    assert refusal(loadPair, pki.expired, pki.oldKey) == f"--tls-cert {pki.expired}: certificate expired on {when}"


def test_notYetValid(pki):
    when = (NOW + 30 * DAY).strftime("%Y-%m-%d %H:%M UTC")
    message = refusal(loadPair, pki.future, pki.oldKey)
    assert message == f"--tls-cert {pki.future}: certificate is not valid before {when}"


def test_clientCAErrors(pki):
    pairs = [(pki.aChain, pki.aKeyFile)]
    message = refusal(ServerTLS.fromFiles, pairs, clientCA=pki.missing)
    assert message.startswith(f"--client-ca {pki.missing}: cannot read:")
    message = refusal(ServerTLS.fromFiles, pairs, clientCA=pki.aKeyFile)
    assert message.startswith(f"--client-ca {pki.aKeyFile}: no certificate in it")


def test_serverTLSNamesTheBadPair(pki):
    """fromFiles refuses with the pair's own message, whichever pair it is."""
    message = refusal(ServerTLS.fromFiles, [(pki.aChain, pki.aKeyFile), (pki.wildCert, pki.aKeyFile)])
    assert message == f"--tls-key {pki.aKeyFile}: does not match the certificate in {pki.wildCert}"


def test_passwordFileUsed(pki):
    tls = ServerTLS.fromFiles([(pki.aChain, pki.aKeyEncrypted)], passwordFile=pki.passwords)
    assert tls.names == ("a.example", "www.a.example")


@pytest.mark.parametrize("tlsMin", ["1.1", "1.0", "TLSv1.2", ""])
def test_badTLSMin(pki, tlsMin):
    message = refusal(ServerTLS.fromFiles, [(pki.aChain, pki.aKeyFile)], tlsMin=tlsMin)
    assert message == f"--tls-min {tlsMin}: must be 1.2 or 1.3"


def test_names(sites):
    assert sites.names == ("a.example", "www.a.example", "*.wild.example")


# SNIMap


@pytest.fixture
def sniMap():
    return SNIMap(
        [
            (("a.example",), "a"),
            (("*.wild.example", "exact.wild.example"), "wild"),
            (("B.Example.", "a.example"), "b"),
            (("*.wild.example", "other.example"), "later"),
        ]
    )


@pytest.mark.parametrize(
    "serverName, expected",
    [
        (None, "a"),
        (b"", "a"),
        ("a.example", "a"),
        (b"a.example", "a"),
        ("A.EXAMPLE", "a"),
        ("a.example.", "a"),
        ("b.example", "b"),
        ("x.wild.example", "wild"),
        (b"X.Wild.Example.", "wild"),
        ("wild.example", "a"),
        ("a.b.wild.example", "a"),
        ("other.example", "later"),
        ("unknown.example", "a"),
    ],
)
def test_sniLookup(sniMap, serverName, expected):
    """Exact, then one-label wildcard, then the first entry; case and a trailing dot do not matter."""
    assert sniMap.lookup(serverName) == expected


def test_sniEarlierEntryWins(sniMap):
    """A name listed twice goes to the first entry that lists it, wildcards included."""
    assert sniMap.lookup("a.example") == "a"
    assert sniMap.lookup("y.wild.example") == "wild"


def test_sniExactBeatsWildcard():
    sni = SNIMap([(("*.example",), "wild"), (("host.example",), "exact")])
    assert sni.lookup("host.example") == "exact"
    assert sni.lookup("other.example") == "wild"


def test_sniMapNeedsAnEntry():
    with pytest.raises(ValueError):
        SNIMap([])


# Handshakes in memory


class HandshakeFailed(Exception):
    def __init__(self, side, error):
        super().__init__(side, error)
        self.side = side


class _TLSProtocol:
    """Stands in for the TLSMemoryBIOProtocol Twisted sets as app data (its ALPN callback reads it)."""

    factory = types.SimpleNamespace(wrappedFactory=object())


def handshake(serverTLS, serverName=None, maxVersion=None, clientCert=None, alpn=None, trust=None, server=None):
    """
    Run a handshake between an OpenSSL client and C{serverTLS}, moving the
    bytes by hand.  Returns the client connection; raises L{HandshakeFailed}
    naming the side that gave up.
    """
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if maxVersion is not None:
        ctx.set_max_proto_version(maxVersion)
        ctx.set_cipher_list(b"DEFAULT@SECLEVEL=0")  # so the refusal is the server's
    if clientCert is not None:
        ctx.use_certificate(clientCert[0])
        ctx.use_privatekey(clientCert[1])
    if trust is not None:
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(trust))
        ctx.set_verify(SSL.VERIFY_PEER)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    if serverName is not None:
        client.set_tlsext_host_name(serverName)
    if alpn is not None:
        client.set_alpn_protos(alpn)
    if server is None:
        server = serverTLS.serverConnectionForTLS(None)
    server.set_accept_state()
    server.set_app_data(_TLSProtocol())
    done = {}
    for _ in range(20):
        for side, conn in (("client", client), ("server", server)):
            if side not in done:
                try:
                    conn.do_handshake()
                    done[side] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    raise HandshakeFailed(side, e)
        moved = False
        for source, sink in ((client, server), (server, client)):
            try:
                sink.bio_write(source.bio_read(65536))
                moved = True
            except SSL.WantReadError:
                pass
        if len(done) == 2 and not moved:
            return client
    raise AssertionError("handshake did not finish")


def peerSubject(client):
    return client.get_peer_certificate().to_cryptography().subject


def test_sniPicksCertificate(pki, sites):
    assert peerSubject(handshake(sites, b"a.example")) == pki.a.subject
    assert peerSubject(handshake(sites, b"www.a.example")) == pki.a.subject
    assert peerSubject(handshake(sites, b"x.wild.example")) == pki.wild.subject
    assert peerSubject(handshake(sites, b"X.WILD.EXAMPLE")) == pki.wild.subject


def test_noOrUnknownSNIGetsDefault(pki, sites):
    assert peerSubject(handshake(sites)) == pki.a.subject
    assert peerSubject(handshake(sites, b"unknown.example")) == pki.a.subject
    assert peerSubject(handshake(sites, b"wild.example")) == pki.a.subject


def test_wholeChainSent(pki, sites):
    """The intermediate goes out with the leaf: a client that trusts only the root verifies it."""
    client = handshake(sites, b"a.example", trust=pki.ca)
    chain = [c.to_cryptography() for c in client.get_peer_cert_chain()]
    assert chain == [pki.a, pki.inter]
    assert [c.to_cryptography() for c in client.get_verified_chain()] == [pki.a, pki.inter, pki.ca]


def test_chainSentAfterSNISwitch(pki):
    """The SNI-chosen context carries its own chain, not the default's."""
    tls = ServerTLS.fromFiles([(pki.wildCert, pki.wildKeyFile), (pki.aChain, pki.aKeyFile)])
    client = handshake(tls, b"a.example", trust=pki.ca)
    assert [c.to_cryptography() for c in client.get_peer_cert_chain()] == [pki.a, pki.inter]


def test_forwardSecretAEADOnly(sites):
    client = handshake(sites, b"a.example", maxVersion=SSL.TLS1_2_VERSION)
    assert client.get_protocol_version_name() == "TLSv1.2"
    assert client.get_cipher_name().startswith("ECDHE-")
    assert "GCM" in client.get_cipher_name() or "CHACHA20" in client.get_cipher_name()


def test_tls11Refused(sites):
    with pytest.raises(HandshakeFailed) as info:
        handshake(sites, b"a.example", maxVersion=SSL.TLS1_1_VERSION)
    assert info.value.side == "server"


def test_tlsMin13(pki):
    tls = ServerTLS.fromFiles([(pki.aChain, pki.aKeyFile)], tlsMin="1.3")
    assert handshake(tls).get_protocol_version_name() == "TLSv1.3"
    with pytest.raises(HandshakeFailed) as info:
        handshake(tls, maxVersion=SSL.TLS1_2_VERSION)
    assert info.value.side == "server"


def test_alpn(sites):
    assert handshake(sites, b"a.example", alpn=[b"h2", b"http/1.1"]).get_alpn_proto_negotiated() == b"http/1.1"
    assert handshake(sites, b"x.wild.example", alpn=[b"http/1.1"]).get_alpn_proto_negotiated() == b"http/1.1"


@pytest.fixture(scope="module")
def mutual(pki):
    return ServerTLS.fromFiles([(pki.aChain, pki.aKeyFile), (pki.wildCert, pki.wildKeyFile)], clientCA=pki.caFile)


@pytest.mark.parametrize("serverName", [None, b"x.wild.example"])
def test_clientCertificateAccepted(pki, mutual, serverName):
    handshake(mutual, serverName, clientCert=pki.client)


@pytest.mark.parametrize("serverName", [None, b"x.wild.example"])
@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION, None])
def test_clientCertificateMissingRefused(mutual, serverName, version):
    """No client certificate, no connection: on the default and on an SNI-chosen context, TLS 1.2 and 1.3."""
    with pytest.raises(HandshakeFailed) as info:
        handshake(mutual, serverName, maxVersion=version)
    assert info.value.side == "server"


@pytest.mark.parametrize("serverName", [None, b"x.wild.example"])
def test_clientCertificateFromOtherCARefused(pki, mutual, serverName):
    with pytest.raises(HandshakeFailed) as info:
        handshake(mutual, serverName, clientCert=pki.otherClient)
    assert info.value.side == "server"


def test_clientCAListAdvertised(pki, mutual):
    client = handshake(mutual, clientCert=pki.client)
    assert [n.CN for n in client.get_client_ca_list()] == ["Test CA"]


# reload


def test_reload(pki, tmp_path):
    cert, key = str(tmp_path / "site.pem"), str(tmp_path / "site.key")
    with open(cert, "wb") as f:
        f.write(open(pki.aChain, "rb").read())
    with open(key, "wb") as f:
        f.write(open(pki.aKeyFile, "rb").read())
    tls = ServerTLS.fromFiles([(cert, key)])
    earlier = tls.serverConnectionForTLS(None)  # accepted before the reload, hello arrives after
    assert peerSubject(handshake(tls)) == pki.a.subject

    with open(cert, "wb") as f:
        f.write(open(pki.wildCert, "rb").read())
    with open(key, "wb") as f:
        f.write(open(pki.wildKeyFile, "rb").read())
    tls.reload()
    assert tls.names == ("*.wild.example",)
    assert peerSubject(handshake(tls)) == pki.wild.subject
    assert peerSubject(handshake(tls, server=earlier)) == pki.a.subject

    with open(cert, "wb") as f:
        f.write(open(pki.aChain, "rb").read())  # the key is still wild's: a half-done renewal
    message = refusal(tls.reload)
    assert message == f"--tls-key {key}: does not match the certificate in {cert}"
    assert tls.names == ("*.wild.example",)
    assert peerSubject(handshake(tls, b"x.wild.example")) == pki.wild.subject


def test_throughTwisted(pki, sites):
    """
    Wired as the daemon does (TLSMemoryBIOFactory, in memory through iosim):
    SNI, the chain and ALPN reach a Twisted client, and bytes flow.
    """
    class Recorder(Protocol):
        data = b""

        def dataReceived(self, data):
            self.data += data

    server, client = Recorder(), Recorder()
    trust = tssl.Certificate(crypto.X509.from_cryptography(pki.ca))
    creator = tssl.optionsForClientTLS("x.wild.example", trust, acceptableProtocols=[b"http/1.1"])
    clock = Clock()  # TLS transports batch writes until the next turn of the clock
    serverFactory = TLSMemoryBIOFactory(sites, False, Factory.forProtocol(lambda: server), clock=clock)
    clientFactory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: client), clock=clock)
    clientTLS, serverTLS, pump = connectedServerAndClient(
        lambda: serverFactory.buildProtocol(None), lambda: clientFactory.buildProtocol(None), greet=False, clock=clock
    )
    clientTLS.write(b"GET / HTTP/1.1\r\n\r\n")
    pump.flush()
    assert server.data == b"GET / HTTP/1.1\r\n\r\n"
    assert clientTLS.negotiatedProtocol == b"http/1.1"
    assert clientTLS.getPeerCertificate().to_cryptography() == pki.wild
