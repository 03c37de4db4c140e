# -*- test-case-name: tests.unit.test_tlsserver -*-
"""
The server side of TLS for proxyd's listeners: C{--mode=reverse}, and the
"HTTPS proxy" that C{--tls-cert} makes of C{forward}/C{mitm}.

Every C{--tls-cert}/C{--tls-key} pair is loaded and checked up front, so a
bad file is refused at start (or at C{SIGHUP}) with one line naming it,
never found out by the first client.  Each pair becomes one OpenSSL context,
built once per (re)load with Twisted's public L{CertificateOptions}; SNI
switches between them.  A reload builds everything anew and swaps one
attribute, so a failed reload leaves the running state untouched and
connections already made keep the context they started with.
"""

import datetime
import re

import attr
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, Certificate, CertificateOptions, TLSVersion
from twisted.internet.ssl import trustRootFromCertificates
from zope.interface import implementer

# Forward secrecy and AEAD only; TLS 1.3 suites are all both already.
_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString("ECDHE+AESGCM:ECDHE+CHACHA20")
_TLS_MIN = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
_ALPN = [b"http/1.1"]
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TLSConfigError(ValueError):
    """
    A TLS file or setting that cannot be used.  C{str()} is one line naming
    the option and file, so the daemon prints it as is and exits (or, on
    reload, logs it and keeps serving).
    """


def _refuse(option, path, problem):
    """A L{TLSConfigError} of one line, whatever the path or problem hold."""
    line = f"{option} {path}: {problem}"
    return TLSConfigError(line.replace("\r", " ").replace("\n", " "))


def _read(option, path):
    """The bytes of C{path}, or a L{TLSConfigError} saying why not."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise _refuse(option, path, f"cannot read: {e.strerror or e}") from None


def _pemBlocks(data, wanted):
    """The PEM blocks in C{data} whose label passes C{wanted}, in file order."""
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if wanted(m.group(1))]


def _loadCertificates(option, path):
    """
    Every certificate in a PEM file, in file order.  Other blocks (a key kept
    in the same file) are skipped, as nginx and HAProxy do.
    """
    data = _read(option, path)
    if b"-----BEGIN " not in data:
        raise _refuse(option, path, "not a PEM file (no -----BEGIN line; DER needs converting)")
    blocks = _pemBlocks(data, lambda label: label == b"CERTIFICATE")
    if not blocks:
        raise _refuse(option, path, "no certificate in it (no -----BEGIN CERTIFICATE----- block)")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            raise _refuse(option, path, f"certificate {number} in the file is malformed") from None
    return certificates


def _loadKey(path, passwords):
    """
    The first private key in C{path}: tried without a passphrase, then with
    each of C{passwords} in turn, like nginx's C{ssl_password_file}.
    """
    data = _read("--tls-key", path)
    blocks = _pemBlocks(data, lambda label: label.endswith(b"PRIVATE KEY"))
    if not blocks:
        raise _refuse("--tls-key", path, "no private key in it (no -----BEGIN ... PRIVATE KEY----- block)")
    for password in (None,) + tuple(passwords):
        try:
            return serialization.load_pem_private_key(blocks[0], password)
        except TypeError:
            continue  # encrypted and no passphrase, or a passphrase for a plain key
        except ValueError:
            if password is None:
                raise _refuse("--tls-key", path, "the private key is malformed") from None
        except UnsupportedAlgorithm as e:
            raise _refuse("--tls-key", path, f"unsupported private key ({e})") from None
    raise _refuse("--tls-key", path, "is encrypted: wrong or missing passphrase (--tls-key-password-file)")


def _dnsNames(certificate):
    """
    The lower-case DNS names a certificate is for: its subjectAltName, or
    its CN when it has none (old self-made certificates).
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(str(n).lower().rstrip(".") for n in names))


def _when(moment):
    """A date as people read it in a log line; minutes are enough for expiry."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@attr.s(frozen=True)
class CertKeyPair:
    """
    One C{--tls-cert}/C{--tls-key} pair, loaded and checked.

    @ivar names: lower-case DNS names it serves (may include C{*.example.com}).
    @ivar chain: the certificates after the leaf, in file order, sent with it.
    @ivar notAfter: when the leaf expires (UTC), for a log line or a metric.
    """

    certPath = attr.ib()
    keyPath = attr.ib()
    names = attr.ib()
    certificate = attr.ib()
    chain = attr.ib()
    key = attr.ib()
    notAfter = attr.ib()


def loadPair(certPath, keyPath, passwords=()):
    """
    Load and check one pair.  Everything a handshake would trip over later
    is refused now: no certificate, no key, a key that does not unlock or
    does not match the leaf, a leaf outside its validity period.

    @param passwords: passphrases to try in turn for an encrypted key.
    @rtype: L{CertKeyPair}
    @raise TLSConfigError: naming the file and what is wrong with it.
    """
    leaf, *chain = _loadCertificates("--tls-cert", certPath)
    key = _loadKey(keyPath, passwords)
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise _refuse("--tls-key", keyPath, f"does not match the certificate in {certPath}")
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > leaf.not_valid_after_utc:
        raise _refuse("--tls-cert", certPath, f"certificate expired on {_when(leaf.not_valid_after_utc)}")
    if now < leaf.not_valid_before_utc:
        raise _refuse("--tls-cert", certPath, f"certificate is not valid before {_when(leaf.not_valid_before_utc)}")
    return CertKeyPair(certPath, keyPath, _dnsNames(leaf), leaf, chain, key, leaf.not_valid_after_utc)


def readPasswords(path):
    """
    The passphrases in a C{--tls-key-password-file}, one a line (as nginx's
    C{ssl_password_file}); blank lines are skipped, nothing else is trimmed
    since a passphrase may end in a space.

    @rtype: L{tuple} of L{bytes}
    """
    lines = (line.rstrip(b"\r") for line in _read("--tls-key-password-file", path).split(b"\n"))
    passwords = tuple(line for line in lines if line)
    if not passwords:
        raise _refuse("--tls-key-password-file", path, "no passphrase in it")
    return passwords


class SNIMap:
    """
    Which value (an OpenSSL context, in proxyd) serves a TLS server name:
    the exact name, else a wildcard covering exactly one more label (RFC 6125:
    C{*.example.com} is for C{a.example.com}, not C{example.com} nor
    C{a.b.example.com}), else the first entry.
    """

    def __init__(self, entries):
        """
        @param entries: L{list} of C{(names, value)}; the first is the default,
            and for a name listed twice the earlier entry wins.
        """
        if not entries:
            raise ValueError("SNIMap needs at least one entry")
        self._default = entries[0][1]
        self._exact = {}
        self._wildcard = {}
        for names, value in entries:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], value)
                else:
                    self._exact.setdefault(name, value)

    def lookup(self, serverName):
        """
        @param serverName: the client's SNI as L{bytes} or L{str}, or L{None}
            when it sent none.
        """
        if isinstance(serverName, bytes):
            serverName = serverName.decode("ascii", "replace")
        if not serverName:
            return self._default
        name = serverName.lower().rstrip(".")
        if name in self._exact:
            return self._exact[name]
        label, _, parent = name.partition(".")
        if label and parent and parent in self._wildcard:
            return self._wildcard[parent]
        return self._default


@attr.s(frozen=True)
class _State:
    """What one (re)load made; replaced whole, never changed."""

    pairs = attr.ib()
    defaultContext = attr.ib()
    names = attr.ib()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS connection creator for proxyd's listeners: give it to
    C{TLSMemoryBIOFactory} or a C{wrapServerEndpoint}, call L{reload} on
    C{SIGHUP}.
    """

    def __init__(self, pairs, tlsMin="1.2", clientCA=None, passwordFile=None):
        if tlsMin not in _TLS_MIN:
            raise TLSConfigError(f"--tls-min {tlsMin}: must be 1.2 or 1.3")
        if not pairs:
            raise TLSConfigError("--tls-cert: at least one --tls-cert/--tls-key pair is needed")
        self._paths = tuple((str(cert), str(key)) for cert, key in pairs)
        self._tlsMin = tlsMin
        self._clientCA = clientCA
        self._passwordFile = passwordFile
        self._state = self._load()

    @classmethod
    def fromFiles(cls, pairs, tlsMin="1.2", clientCA=None, passwordFile=None):
        """
        @param pairs: L{list} of C{(certPath, keyPath)}; the first is the
            default for clients that send no or an unknown server name.
        @param tlsMin: C{"1.2"} or C{"1.3"}.
        @param clientCA: a PEM file of CAs; when given, every client must
            present a certificate issued by one of them.
        @param passwordFile: passphrases for encrypted keys, one a line.
        @raise TLSConfigError: when anything is wrong with any of them.
        """
        return cls(pairs, tlsMin, clientCA, passwordFile)

    @property
    def names(self):
        """Every name served, in the order configured, for a log line."""
        return self._state.names

    @property
    def pairs(self):
        """The loaded L{CertKeyPair}s, e.g. to log when each expires."""
        return self._state.pairs

    def reload(self):
        """
        Re-read every file.  On any error raise L{TLSConfigError} and keep
        serving what was loaded before; on success, new handshakes get the
        new certificates while open connections keep theirs.
        """
        self._state = self._load()

    def adopt(self, other):
        """
        Serve what another, already loaded L{ServerTLS} serves (its files,
        minimum version, client CA), from the next handshake on: how a
        reloaded configuration reaches the listeners, which hold this one.
        """
        self._paths = other._paths
        self._tlsMin = other._tlsMin
        self._clientCA = other._clientCA
        self._passwordFile = other._passwordFile
        self._state = other._state

    def serverConnectionForTLS(self, tlsProtocol):
        """A connection on the current default context; SNI may switch it."""
        return SSL.Connection(self._state.defaultContext, None)

    def _load(self):
        """Build a complete L{_State} from the files, or raise."""
        passwords = readPasswords(self._passwordFile) if self._passwordFile else ()
        pairs = tuple(loadPair(cert, key, passwords) for cert, key in self._paths)
        authorities = _loadCertificates("--client-ca", self._clientCA) if self._clientCA else []
        trustRoot = None
        if authorities:
            trustRoot = trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in authorities])
        sniMap = None  # set below; the callback only runs during handshakes

        def contextForServerName(serverName):
            return sniMap.lookup(serverName)

        contexts = []
        for pair in pairs:
            context = self._context(pair, trustRoot, contextForServerName)
            for authority in authorities:
                context.add_client_ca(authority)  # so a client with several picks the right one
            contexts.append(context)
        sniMap = SNIMap([(pair.names, context) for pair, context in zip(pairs, contexts)])
        names = tuple(dict.fromkeys(name for pair in pairs for name in pair.names))
        return _State(pairs, contexts[0], names)

    def _context(self, pair, trustRoot, contextForServerName):
        """One pair's OpenSSL context, with the policy every listener shares."""
        try:
            options = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(pair.key),
                certificate=crypto.X509.from_cryptography(pair.certificate),
                extraCertChain=[crypto.X509.from_cryptography(c) for c in pair.chain],
                raiseMinimumTo=_TLS_MIN[self._tlsMin],
                acceptableCiphers=_CIPHERS,
                acceptableProtocols=_ALPN,
                trustRoot=trustRoot,
                contextForServerName=contextForServerName,
            )
            return options.getContext()
        except (SSL.Error, TypeError, ValueError) as e:
            raise _refuse("--tls-cert", pair.certPath, f"OpenSSL cannot use it with {pair.keyPath}: {e}") from None
