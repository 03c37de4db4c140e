# -*- test-case-name: tests.unit.test_ca -*-
"""
proxyd's own certificate authority for C{--mode=mitm}: the CA in C{ca.pem}
and C{ca.key} (made once, refused when unsafe), and the leaf certificates
it signs on the fly for each host a client asks for.  Every refusal is a
L{CAError} of one line naming the file, so callers print it as is.
"""

import collections
import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import socket
import time

import attr
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CA_VALIDITY = datetime.timedelta(days=3652)  # ten years
BACKDATE = datetime.timedelta(days=2)  # clients whose clock is slow still accept
LEAF_VALIDITY = datetime.timedelta(days=397)  # notBefore to notAfter, backdate included
RENEW_BEFORE = datetime.timedelta(days=1)  # a cached leaf this near notAfter is remade
CACHE_SIZE = 4096  # leaves: 1.5-2 KiB each (measured RSS), so at most about 8 MiB

_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)((?!-)[a-z0-9_-]{1,63}\.)*(?!-)[a-z0-9_-]{1,63}\Z")
_DIGITS = re.compile(r"[0-9.]+\Z")
_attribute = x509.NameAttribute


class CAError(Exception):
    """A CA that cannot be used; C{str(err)} is one line naming the file and why."""


def defaultDirectory(environ=None):
    """Where the CA lives without C{--ca-dir}: C{$PROXYD_HOME}, else C{~/.proxyd}."""
    environ = os.environ if environ is None else environ
    return environ.get("PROXYD_HOME") or os.path.join(os.path.expanduser("~"), ".proxyd")


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _serial():
    """128 random bits, the top one set: always positive and 128 bits long."""
    return secrets.randbits(127) | (1 << 127)


def _extension(certificate, kind):
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _spki(keyOrCertificate):
    return keyOrCertificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path, secret=False):
    """
    A file's bytes; a C{secret} one is refused if group or others may touch
    it (the mode comes from fstat, so it is that of the file read).
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            if secret and mode & 0o077:
                verb = "readable" if mode & 0o044 else "writable"
                who = "others" if mode & 0o007 else "its group"
                raise CAError(f"{path} is {verb} by {who} (mode {mode:04o}); chmod 600 it")
            return f.read()
    except FileNotFoundError:
        raise CAError(f"{path}: no such file")
    except OSError as e:
        raise CAError(f"{path}: cannot read it ({e.strerror})")


def loadCertificate(path, now=None):
    """
    A CA certificate without its key (C{proxyd ca path|export} need no key).

    @raise CAError: missing, not PEM, not a CA, or outside its validity.
    """
    return _checkCA(_read(path), path, time.time() if now is None else now)


def _checkCA(data, path, now):
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CAError(f"{path}: not a PEM certificate")
    if not getattr(_extension(certificate, x509.BasicConstraints), "ca", False):
        raise CAError(f"{path}: not a CA certificate (no basicConstraints CA:true)")
    # No keyUsage at all is allowed by RFC 5280, but webpki and cryptography refuse it.
    if not getattr(_extension(certificate, x509.KeyUsage), "key_cert_sign", False):
        raise CAError(f"{path}: not a CA certificate (keyUsage lacks keyCertSign)")
    notBefore, notAfter = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if _utc(now) > notAfter:
        raise CAError(f"{path}: expired on {notAfter:%Y-%m-%d %H:%M} UTC")
    if _utc(now) < notBefore:
        raise CAError(f"{path}: not valid before {notBefore:%Y-%m-%d %H:%M} UTC; check the clock")
    return certificate


class CertificateAuthority:
    """
    A CA certificate and its private key, checked on load.

    The key made here is ECDSA P-256: every TLS client of the last decade
    takes it, it is as strong as RSA-3072, and each new host costs one CA
    signature - about 0.05 ms with P-256 against 1 ms with RSA-2048.

    @ivar key: signs leaves; never a leaf's key.
    @ivar created: C{True} if this process has just made the CA.
    """

    def __init__(self, certificate, key, certPath, keyPath, created=False):
        self.certificate = certificate
        self.key = key
        self.certPath = certPath
        self.keyPath = keyPath
        self.created = created
        self.certPEM = certificate.public_bytes(_PEM)
        self.x509 = crypto.X509.from_cryptography(certificate)
        self.subjectKeyIdentifier = _extension(
            certificate, x509.SubjectKeyIdentifier
        ) or x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())  # a user's CA

    notBefore = property(lambda self: self.certificate.not_valid_before_utc)
    notAfter = property(lambda self: self.certificate.not_valid_after_utc)

    @property
    def subject(self):
        """C{CN=..., O=...} in certificate order, as openssl shows it."""
        return ", ".join(a.rfc4514_string() for a in self.certificate.subject)

    @property
    def fingerprint(self):
        """SHA-256 of the DER as C{AB:CD:...}, as openssl and browsers show it."""
        return self.certificate.fingerprint(hashes.SHA256()).hex(":").upper()

    @classmethod
    def fromFiles(cls, certPath, keyPath, now=None):
        """
        Load an existing CA (C{--ca-cert FILE --ca-key FILE}); nothing is made.

        @param now: POSIX seconds to judge validity at; default the time now.
        """
        certData, keyData = _read(certPath), _read(keyPath, secret=True)
        try:
            key = serialization.load_pem_private_key(keyData, password=None)
        except TypeError:
            raise CAError(f"{keyPath}: the key has a passphrase; proxyd needs it without")
        except (ValueError, UnsupportedAlgorithm):
            raise CAError(f"{keyPath}: not a PEM private key")
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise CAError(f"{keyPath}: proxyd signs with RSA or ECDSA keys only")
        certificate = _checkCA(certData, certPath, time.time() if now is None else now)
        if _spki(key) != _spki(certificate):
            raise CAError(f"{keyPath} is not the key of {certPath} (they do not match)")
        return cls(certificate, key, certPath, keyPath)

    @classmethod
    def inDirectory(cls, directory=None, now=None, create=True):
        """
        The CA in C{directory} (default L{defaultDirectory}): loaded if there,
        else made when C{create}.  Half a pair is refused, never replaced.
        """
        directory = defaultDirectory() if directory is None else directory
        certPath = os.path.join(directory, CA_CERT)
        keyPath = os.path.join(directory, CA_KEY)
        if not os.path.lexists(certPath) and not os.path.lexists(keyPath):
            if not create:
                raise CAError(f"{directory}: no CA here yet; 'proxyd ca init' makes one")
            try:
                return cls.create(directory, now)
            except FileExistsError:
                pass  # another process made it meanwhile: use theirs
        for missing, other in ((certPath, CA_KEY), (keyPath, CA_CERT)):
            if not os.path.lexists(missing):
                raise CAError(
                    f"{missing}: no such file, but {other} is there; restore it, "
                    "or remove both to make a new CA"
                )
        return cls.fromFiles(certPath, keyPath, now)

    @classmethod
    def create(cls, directory, now=None):
        """
        Make a new CA in C{directory} (made 0700 if absent).  Each file is
        written in full under a temporary name (C{O_CREAT|O_EXCL}, mode 0600,
        under umask 077 as mitmproxy's C{umask_secret}, so the key is never
        open to others even briefly) then hard-linked into place, which never
        replaces a file: a crash while writing leaves only temporary files,
        and of two racing processes one wins (the other loads its CA).  The
        umask is process-wide: call this at start-up, not under load.

        @raise FileExistsError: C{ca.key} or C{ca.pem} appeared meanwhile.
        """
        now = time.time() if now is None else now
        certPath = os.path.join(directory, CA_CERT)
        keyPath = os.path.join(directory, CA_KEY)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _makeCACertificate(key, _utc(now))
        keyPEM = key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())
        suffix = f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
        written, linking, umask = [], False, os.umask(0o077)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            for path, data, mode in (
                (keyPath, keyPEM, 0o600),
                (certPath, certificate.public_bytes(_PEM), 0o644),  # public
            ):
                fd = os.open(path + suffix, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                written.append(path + suffix)
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(fd, mode)
                    f.write(data)
                    f.flush()
                    os.fsync(fd)
            linking = True
            os.link(keyPath + suffix, keyPath)
            os.link(certPath + suffix, certPath)
        except OSError as e:
            if linking and isinstance(e, FileExistsError):
                raise
            raise CAError(f"{directory}: cannot create the CA there ({e.strerror})")
        finally:
            os.umask(umask)
            for path in written:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return cls(certificate, key, certPath, keyPath, created=True)


def _makeCACertificate(key, now):
    host = socket.gethostname() or "an unnamed host"
    name = x509.Name(  # the OU tells apart two CAs of one host in a browser's list
        [
            _attribute(NameOID.COMMON_NAME, f"proxyd CA on {host}"[:64]),
            _attribute(NameOID.ORGANIZATION_NAME, "proxyd"),
            _attribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"made {now:%Y-%m-%d}"),
        ]
    )
    signOnly = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(signOnly, critical=True)  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


@attr.s(frozen=True, slots=True, repr=False)
class SharedKey:
    """The one leaf key of a process, in each form a TLS layer may want."""

    key = attr.ib()
    keyPEM = attr.ib()
    pkey = attr.ib()


_sharedKeys = {}


def sharedLeafKey(keyType):
    """
    The process's leaf key: C{"ecdsa"} (P-256) or C{"rsa"} (RSA-2048), made
    on the first call.  RSA takes 50-150 ms: call it at start-up.
    """
    if keyType not in ("ecdsa", "rsa"):
        raise ValueError(f"--leaf-key: expected ecdsa or rsa, got {keyType!r}")
    if keyType not in _sharedKeys:
        if keyType == "ecdsa":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())
        _sharedKeys[keyType] = SharedKey(key, pem, crypto.PKey.from_cryptography_key(key))
    return _sharedKeys[keyType]


@attr.s(frozen=True, slots=True, repr=False)
class Leaf:
    """
    A leaf certificate and the shared key.  Give the TLS layer
    C{CertificateOptions(privateKey=leaf.key, certificate=leaf.certificate)}:
    pyOpenSSL >= 24.3 takes cryptography objects and deprecates its own
    X509/PKey there, so C{x509} is made only when asked for.
    """

    name = attr.ib()  # str DNS name, or an ipaddress object
    certificate = attr.ib()
    sharedKey = attr.ib()
    notAfter = attr.ib()  # POSIX seconds

    key = property(lambda self: self.sharedKey.key)
    keyPEM = property(lambda self: self.sharedKey.keyPEM)
    pkey = property(lambda self: self.sharedKey.pkey)
    serial = property(lambda self: self.certificate.serial_number)
    certPEM = property(lambda self: self.certificate.public_bytes(_PEM))
    x509 = property(lambda self: crypto.X509.from_cryptography(self.certificate))


def normalizeName(name):
    """
    The name a leaf is made for: an C{ipaddress} object for an IP literal
    (brackets and an IPv6 zone dropped), else a lower-case A-label DNS name.

    @raise ValueError: not a host name.
    """
    if isinstance(name, bytes):
        name = name.decode("ascii")
    host = name.rstrip(".").lower()
    if _DNS_NAME.match(host) and not _DIGITS.match(host):
        return host  # the usual case, without ip_address's slow refusal
    try:
        return ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
    except ValueError:
        pass
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if not _DNS_NAME.match(host):
        raise ValueError(f"not a host name: {name[:300]!r}")
    return host


class LeafFactory:
    """
    Leaf certificates per host, signed by a L{CertificateAuthority}, all
    with one shared key, kept in a bounded LRU; concurrent first asks for a
    host share one generation (as txacme's C{issue_cert}).

    Measured here (2 shared cores, C{/tmp/pv} venv): a leaf takes 0.2-0.3
    ms with the P-256 CA, ECDSA or RSA leaf key alike (only the CA signs),
    so it is made synchronously; a hit takes 3 us.  An RSA CA from
    C{--ca-cert} takes 1.0-1.3 ms (RSA-2048) to 5-7 ms (RSA-4096), so it
    signs in the reactor's thread pool: with a thread signing RSA-4096 back
    to back, the reactor thread still woke within about the GIL switch
    interval (p99 5-7 ms), not after whole signatures (6-20 ms there).

    @ivar generated: leaves made.
    @ivar hits: asks answered from the cache.
    @ivar misses: asks that found no usable leaf cached (C{>= generated}).
    """

    _log = Logger()

    def __init__(self, ca, keyType="ecdsa", *, clock, cacheSize=CACHE_SIZE, runner=None):
        """
        @param clock: has C{seconds()}; a reactor with a thread pool also
            signs for RSA CAs there.
        @param runner: C{runner(f, *args) -> Deferred}, overriding that
            choice (tests hold generations open with it).
        """
        if cacheSize < 1:
            raise ValueError("cacheSize must be at least 1")
        self.ca = ca
        self.sharedKey = sharedLeafKey(keyType)
        self.cacheSize = cacheSize
        self._clock = clock
        self._cache = collections.OrderedDict()
        self._inFlight = {}
        self.generated = self.hits = self.misses = 0
        if runner is None:
            runner = maybeDeferred
            if isinstance(ca.key, rsa.RSAPrivateKey) and hasattr(clock, "getThreadPool"):
                runner = lambda f, *a: deferToThreadPool(clock, clock.getThreadPool(), f, *a)
        self._runner = runner
        # digitalSignature, and keyEncipherment for TLS 1.2 RSA key exchange
        usage = [True, False, keyType == "rsa"] + [False] * 6
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier
        self._fixed = [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.KeyUsage(*usage), True),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.SubjectKeyIdentifier.from_public_key(self.sharedKey.key.public_key()), False),
            (aki(ca.subjectKeyIdentifier), False),
        ]

    @property
    def cached(self):
        """How many leaves the cache holds."""
        return len(self._cache)

    def leafFor(self, name):
        """
        The leaf for C{name}, an SNI or CONNECT host (str or bytes).

        @return: C{Deferred[Leaf]}, failing with C{ValueError} for a name
            that is not a host, L{CAError} once the CA has expired.
            Cancelling it leaves the generation going for other askers.
        """
        try:
            key = normalizeName(name)
        except ValueError as e:
            return fail(e)
        now = self._clock.seconds()
        leaf = self._cache.get(key)
        if leaf is not None:
            if now < leaf.notAfter - RENEW_BEFORE.total_seconds():
                self._cache.move_to_end(key)
                self.hits += 1
                return succeed(leaf)
            del self._cache[key]
        self.misses += 1
        waiting = self._inFlight.get(key)
        first = waiting is None
        if first:
            waiting = self._inFlight[key] = []
        d = Deferred(canceller=waiting.remove)
        waiting.append(d)
        if first:
            self._runner(self._make, key, now).addBoth(self._made, key)
        return d

    def _made(self, result, key):
        waiting = self._inFlight.pop(key)
        if not isinstance(result, Leaf):
            if result.check(CAError):
                self._log.error("No leaf for {name}: {why}", name=str(key), why=result.value)
            else:
                self._log.failure("No leaf for {name}", failure=result, name=str(key))
            for d in waiting:
                d.errback(result)
            return
        self.generated += 1
        self._cache[key] = result
        while len(self._cache) > self.cacheSize:
            self._cache.popitem(last=False)
        for d in waiting:
            d.callback(result)

    def _make(self, name, now):
        """Build and sign one leaf; touches no state, so it may run in a thread."""
        ca = self.ca
        start = _utc(int(now))  # certificates hold whole seconds
        notBefore = max(start - BACKDATE, ca.notBefore)
        notAfter = min(notBefore + LEAF_VALIDITY, ca.notAfter)
        if notAfter <= start:
            raise CAError(f"{ca.certPath}: expired on {ca.notAfter:%Y-%m-%d %H:%M} UTC")
        san = x509.DNSName(name) if isinstance(name, str) else x509.IPAddress(name)
        subject = []  # a CN holds under 64 characters; past that the SAN alone names it
        if len(str(name)) < 64:
            subject = [
                _attribute(NameOID.COMMON_NAME, str(name)),
                _attribute(NameOID.ORGANIZATION_NAME, "proxyd"),
            ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca.certificate.subject)
            .public_key(self.sharedKey.key.public_key())
            .serial_number(_serial())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
            # RFC 5280 4.2.1.6: critical exactly when the subject is empty
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
        )
        for extension, critical in self._fixed:
            builder = builder.add_extension(extension, critical)
        certificate = builder.sign(ca.key, hashes.SHA256())
        return Leaf(name, certificate, self.sharedKey, notAfter.timestamp())
