# -*- test-case-name: tests.unit.test_policy -*-
"""
Who may use the proxy and where it may connect: --allow, --connect-ports,
--allow-private/--deny-private and --proxy-auth(-file).

Everything here is pure except L{ProxyAuth}, which needs the reactor's
thread pool for bcrypt.
"""

import base64
import hashlib
import hmac
import ipaddress
import os
from collections import OrderedDict

import attr
from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

_MAX_PORT = 65535


def _ip(text):
    """
    Parse an address, unwrapping IPv4-mapped IPv6 (::ffff:a.b.c.d) so that
    it is judged as the IPv4 address the kernel will really use.

    @raise ValueError: C{text} is not an IP address.
    """
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _isNumber(text):
    text = text.strip()
    return text.isascii() and text.isdigit()


@attr.s(frozen=True, repr=False)
class PortSet:
    """
    Ports that CONNECT may reach: C{"443"}, C{"443,8443,1000-2000"} or C{"*"}.
    """

    ranges = attr.ib(converter=tuple)
    anyPort = attr.ib(default=False)

    @classmethod
    def parse(cls, text):
        """
        @raise ValueError: with a reason fit to follow C{"--connect-ports: "}.
        """
        text = text.strip()
        if text == "*":
            return cls((), anyPort=True)
        if not text:
            raise ValueError("empty port list (give ports like 443,8443 or *)")
        ranges = []
        for item in text.split(","):
            item = item.strip()
            low, dash, high = item.partition("-")
            if not _isNumber(low) or (dash and not _isNumber(high)):
                raise ValueError(
                    f"{item!r} is not a port or a range like 1000-2000"
                )
            low = int(low)
            high = int(high) if dash else low
            for port in (low, high):
                if not 1 <= port <= _MAX_PORT:
                    raise ValueError(f"port {port} is out of range 1-{_MAX_PORT}")
            if high < low:
                raise ValueError(f"range {item} is reversed")
            ranges.append((low, high))
        return cls(ranges)

    def __contains__(self, port):
        if self.anyPort:
            return True
        return any(low <= port <= high for low, high in self.ranges)

    def __str__(self):
        if self.anyPort:
            return "*"
        return ",".join(
            str(low) if low == high else f"{low}-{high}" for low, high in self.ranges
        )

    def __repr__(self):
        return f"PortSet.parse({str(self)!r})"


@attr.s(frozen=True)
class ClientPolicy:
    """
    The --allow networks: which clients may use the proxy.
    """

    networks = attr.ib(converter=tuple)

    def allows(self, host):
        """
        @param host: the peer's IP address as a string, or the peer address
            object itself.  Peers without an IP address (UNIX sockets) are
            allowed: the file's permissions guard them.
        """
        if host is None or host == "":
            return True
        if not isinstance(host, str):
            host = getattr(host, "host", None)
            if host is None:
                return True
        try:
            ip = _ip(host)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


_LINK_LOCAL = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)
_PRIVATE = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT; cloud metadata too
    ipaddress.ip_network("fc00::/7"),
)
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_NEVER = (
    # Not a host anyone should be proxied to, whatever --allow-private says.
    (ipaddress.ip_network("0.0.0.0/8"), "an unspecified"),
    (ipaddress.ip_network("::/128"), "an unspecified"),
    (ipaddress.ip_network("224.0.0.0/4"), "a multicast"),
    (ipaddress.ip_network("ff00::/8"), "a multicast"),
    (ipaddress.ip_network("240.0.0.0/4"), "a reserved"),
)


@attr.s(frozen=True)
class AddressPolicy:
    """
    Where upstream connections may go, judged on the resolved address so
    that a name pointing at 127.0.0.1 is caught too.
    """

    allowPrivate = attr.ib()
    allowLinkLocal = attr.ib()

    def deniedReason(self, ip):
        """
        @return: why C{ip} may not be reached, e.g.
            C{"127.0.0.1 is a loopback address"}, or L{None} if it may.
        """
        try:
            addr = _ip(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
        for nets, kind in _NEVER:
            if addr in nets:
                return f"{ip} is {kind} address"
        if not self.allowLinkLocal and _within(addr, _LINK_LOCAL):
            return f"{ip} is a link-local address"
        if not self.allowPrivate:
            if _within(addr, _LOOPBACK):
                return f"{ip} is a loopback address"
            if _within(addr, _PRIVATE):
                return f"{ip} is a private address"
            if _within(addr, _LINK_LOCAL):
                return f"{ip} is a link-local address"
        return None


def _within(addr, networks):
    return any(addr in net for net in networks)


_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_UNSUPPORTED_HASHES = ("$apr1$", "{SHA}", "$1$", "$5$", "$6$", "$argon2")


class ProxyAuth:
    """
    Proxy-Authorization: Basic against plain-text or bcrypt entries.

    Plain-text passwords are kept only as SHA-256 digests and compared with
    L{hmac.compare_digest}.  bcrypt is slow on purpose, so it runs in the
    reactor's thread pool and successes are remembered (keyed by an HMAC with
    a per-process secret, never the password) in a small LRU.
    """

    _log = Logger()
    challenge = b'Basic realm="proxyd"'
    cacheSize = 256

    def __init__(self, entries, reactor=None):
        """
        @param entries: C{{user: ("plain", sha256 digest) | ("bcrypt", hash)}},
            all bytes.
        @param reactor: needed only if there are bcrypt entries.
        """
        self._entries = dict(entries)
        self._reactor = reactor
        self._cacheKey = os.urandom(32)
        self._verified = OrderedDict()
        self._dummy = hashlib.sha256(os.urandom(16)).digest()

    @classmethod
    def fromPair(cls, pair, reactor=None):
        """
        From C{--proxy-auth USER:PASSWORD}.

        @raise ValueError: malformed pair.
        """
        user, password = _splitPair(pair)
        return cls({user: _plain(password)}, reactor)

    @classmethod
    def fromFile(cls, path, reactor=None):
        """
        From C{--proxy-auth-file}: C{user:password} or htpasswd bcrypt
        C{user:$2y$...} lines; blank lines and C{#} comments are skipped.

        @raise OSError: unreadable file.
        @raise ValueError: bad content, with the line number.
        """
        with open(path, encoding="utf-8") as f:
            try:
                lines = f.read().splitlines()
            except UnicodeDecodeError:
                raise ValueError("not valid UTF-8 text")
        entries = {}
        for number, line in enumerate(lines, 1):
            # Leading blanks go; trailing ones may be part of a password.
            line = line.lstrip()
            if not line.strip() or line.startswith("#"):
                continue
            try:
                user, password = _splitPair(line)
            except ValueError as e:
                raise ValueError(f"line {number}: {e}")
            if user in entries:
                raise ValueError(f"line {number}: user {user.decode()!r} appears twice")
            secret = password.decode("utf-8")
            if secret.startswith(_BCRYPT_PREFIXES):
                if len(password) != 60:
                    raise ValueError(f"line {number}: malformed bcrypt hash")
                entries[user] = ("bcrypt", password)
            elif secret.startswith(_UNSUPPORTED_HASHES):
                raise ValueError(
                    f"line {number}: unsupported hash; use bcrypt "
                    "(htpasswd -B) or a plain-text password"
                )
            else:
                entries[user] = _plain(password)
        if not entries:
            raise ValueError("no users in file")
        return cls(entries, reactor)

    def verify(self, headerValue):
        """
        @param headerValue: the raw Proxy-Authorization value, or L{None}.
        @return: a L{Deferred} firing with C{True} or C{False}; already fired
            unless a bcrypt hash has to be checked.
        """
        credentials = _parseBasic(headerValue)
        if credentials is None:
            return succeed(False)
        user, password = credentials
        kind, stored = self._entries.get(user, ("plain", self._dummy))
        if kind == "plain":
            given = hashlib.sha256(password).digest()
            return succeed(hmac.compare_digest(given, stored))
        key = hmac.new(self._cacheKey, user + b"\0" + password, "sha256").digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            return succeed(True)
        d = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), _checkBcrypt, password, stored
        )
        d.addCallback(self._remember, key)
        return d

    def _remember(self, ok, key):
        if ok:
            self._verified[key] = True
            while len(self._verified) > self.cacheSize:
                self._verified.popitem(last=False)
        return ok


def _checkBcrypt(password, hashed):
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _plain(password):
    return ("plain", hashlib.sha256(password).digest())


def _splitPair(pair):
    """
    C{"user:password"} -> C{(b"user", b"password")}; the password may hold
    colons, the user may not (Basic auth splits at the first one).
    """
    user, colon, password = pair.partition(":")
    if not colon:
        raise ValueError("expected USER:PASSWORD")
    if not user:
        raise ValueError("the user name is empty")
    if not password:
        raise ValueError("the password is empty")
    return user.encode("utf-8"), password.encode("utf-8")


def _parseBasic(headerValue):
    """
    @return: C{(user, password)} as bytes, or L{None} if the header is
        missing or is not well-formed Basic.
    """
    if not headerValue:
        return None
    scheme, _, token = headerValue.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def listenersAreLoopbackOnly(endpointStrings):
    """
    True if no listener can be reached from another host: tcp/tcp6/ssl bound
    to a loopback interface, unix sockets, and haproxy: around those.
    Anything else (systemd:, unknown types, a host name) counts as public.
    """
    return all(_isLoopbackListener(*splitEndpoint(s)) for s in endpointStrings)


# Where a positional interface sits (index 0 is the type), as
# twisted.internet.endpoints reads them: tcp:PORT:INTERFACE:BACKLOG,
# tcp6:PORT:BACKLOG:INTERFACE, ssl:PORT:KEY:CERT:METHOD:INTERFACE.
_POSITIONAL_INTERFACE = {"tcp": 2, "tcp6": 3, "ssl": 5}


def _isLoopbackListener(args, kwargs):
    if not args:
        return False
    kind = args[0].lower()
    if kind == "unix":
        return True
    if kind == "haproxy":
        return _isLoopbackListener(args[1:], kwargs)
    if kind not in _POSITIONAL_INTERFACE:
        return False
    interface = kwargs.get("interface")
    if interface is None:
        position = _POSITIONAL_INTERFACE[kind]
        interface = args[position] if len(args) > position else ""
    try:
        return _ip(interface).is_loopback
    except ValueError:
        return False


def splitEndpoint(description):
    """
    Split an endpoint string the way twisted.internet.endpoints does:
    C{:} separates, C{\\} escapes, C{key=value} is a keyword (only the first
    C{=} counts).
    """
    args, kwargs = [], {}
    parts, current = [], []
    chars = iter(description)
    seenEquals = False
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
            _add(args, kwargs, parts)
            parts, seenEquals = [], False
        elif c == "=" and not seenEquals:
            parts.append("".join(current))
            current, seenEquals = [], True
        else:
            current.append(c)
    parts.append("".join(current))
    _add(args, kwargs, parts)
    return args, kwargs


def _add(args, kwargs, parts):
    if len(parts) == 1:
        args.append(parts[0])
    else:
        kwargs[parts[0]] = parts[1]
