"""
Tests for L{proxyd.policy}.
"""

import base64
from ipaddress import ip_network

import bcrypt
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from proxyd.policy import (
    AddressPolicy,
    ClientPolicy,
    PortSet,
    ProxyAuth,
    listenersAreLoopbackOnly,
    splitEndpoint,
)


def assertRefused(testCase, parse, cases):
    """C{parse(given)} raises ValueError saying C{reason}, for each C{given: reason} of C{cases}."""
    for given, reason in cases.items():
        with testCase.assertRaises(ValueError) as e:
            parse(given)
        testCase.assertEqual(str(e.exception), reason, given)


class PortSetTests(SynchronousTestCase):
    def test_single(self):
        """A single port contains only itself."""
        ports = PortSet.parse("443")
        self.assertIn(443, ports)
        self.assertNotIn(444, ports)
        self.assertNotIn(80, ports)

    def test_listAndRanges(self):
        """Lists and inclusive ranges combine; spaces are tolerated."""
        ports = PortSet.parse("443, 8443,1000-2000")
        for port in (443, 8443, 1000, 1500, 2000):
            self.assertIn(port, ports)
        for port in (999, 2001, 8444):
            self.assertNotIn(port, ports)
        self.assertEqual(str(ports), "443,8443,1000-2000")

    def test_any(self):
        """C{*} allows every port."""
        ports = PortSet.parse("*")
        self.assertIn(1, ports)
        self.assertIn(65535, ports)
        self.assertEqual(str(ports), "*")

    def test_refused(self):
        """Out-of-range, reversed, empty and non-numeric items are refused
        with a reason."""
        cases = {
            "70000": "port 70000 is out of range 1-65535",
            "0": "port 0 is out of range 1-65535",
            "2000-1000": "range 2000-1000 is reversed",
            "a-b": "'a-b' is not a port or a range like 1000-2000",
            "443,": "'' is not a port or a range like 1000-2000",
            "": "empty port list (give ports like 443,8443 or *)",
            "-5": "'-5' is not a port or a range like 1000-2000",
            "1-2-3": "'1-2-3' is not a port or a range like 1000-2000",
            "1-70000": "port 70000 is out of range 1-65535",
            "44 3": "'44 3' is not a port or a range like 1000-2000",
        }
        assertRefused(self, PortSet.parse, cases)


class ClientPolicyTests(SynchronousTestCase):
    def setUp(self):
        self.policy = ClientPolicy(
            [ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("10.1.0.0/16")]
        )

    def test_allowsListed(self):
        """Addresses inside an allowed network are allowed."""
        for host in ("127.0.0.1", "127.9.9.9", "::1", "10.1.200.3"):
            self.assertTrue(self.policy.allows(host), host)

    def test_deniesOthers(self):
        """Addresses outside every network, and garbage, are denied."""
        for host in ("10.2.0.1", "192.168.1.1", "::2", "not an ip", "fe80::1"):
            self.assertFalse(self.policy.allows(host), host)

    def test_ipv4MappedIPv6(self):
        """An IPv4-mapped IPv6 peer is judged as its IPv4 address."""
        self.assertTrue(self.policy.allows("::ffff:127.0.0.1"))
        self.assertTrue(self.policy.allows("::ffff:10.1.2.3"))
        self.assertFalse(self.policy.allows("::ffff:10.2.2.3"))

    def test_addressObjects(self):
        """Peer address objects work; UNIX peers have no address to check
        and are allowed."""
        self.assertTrue(self.policy.allows(IPv4Address("TCP", "127.0.0.1", 5)))
        self.assertFalse(self.policy.allows(IPv4Address("TCP", "8.8.8.8", 5)))
        self.assertTrue(self.policy.allows(IPv6Address("TCP", "::1", 5)))
        self.assertTrue(self.policy.allows(UNIXAddress(None)))
        self.assertTrue(self.policy.allows(None))


class AddressPolicyTests(SynchronousTestCase):
    strict = AddressPolicy(allowPrivate=False, allowLinkLocal=False)
    implicit = AddressPolicy(allowPrivate=True, allowLinkLocal=False)
    explicit = AddressPolicy(allowPrivate=True, allowLinkLocal=True)

    def test_publicAllowed(self):
        """Public addresses pass every policy."""
        for policy in (self.strict, self.implicit, self.explicit):
            for ip in ("93.184.216.34", "2606:2800:220:1::1", "::ffff:8.8.8.8"):
                self.assertIsNone(policy.deniedReason(ip), ip)

    def test_strictReasons(self):
        """With private denied, each kind is named in the reason."""
        cases = {
            "127.0.0.1": "127.0.0.1 is a loopback address",
            "127.200.0.1": "127.200.0.1 is a loopback address",
            "::1": "::1 is a loopback address",
            "10.0.0.1": "10.0.0.1 is a private address",
            "172.16.5.4": "172.16.5.4 is a private address",
            "172.31.255.255": "172.31.255.255 is a private address",
            "192.168.1.1": "192.168.1.1 is a private address",
            "100.100.100.200": "100.100.100.200 is a private address",
            "fd00::1": "fd00::1 is a private address",
            "169.254.169.254": "169.254.169.254 is a link-local address",
            "fe80::1": "fe80::1 is a link-local address",
        }
        for ip, reason in cases.items():
            self.assertEqual(self.strict.deniedReason(ip), reason)
        self.assertIsNone(self.strict.deniedReason("172.32.0.1"))

    def test_ipv4MappedUnwrapped(self):
        """::ffff:127.0.0.1 is loopback, not a public IPv6 address."""
        self.assertEqual(
            self.strict.deniedReason("::ffff:127.0.0.1"),
            "::ffff:127.0.0.1 is a loopback address",
        )
        self.assertEqual(
            self.implicit.deniedReason("::ffff:169.254.169.254"),
            "::ffff:169.254.169.254 is a link-local address",
        )

    def test_implicitAllowsPrivateNotLinkLocal(self):
        """The loopback-listener default lets private through but not
        link-local (cloud metadata)."""
        for ip in ("127.0.0.1", "::1", "10.0.0.1", "fd00::1"):
            self.assertIsNone(self.implicit.deniedReason(ip), ip)
        self.assertEqual(
            self.implicit.deniedReason("169.254.169.254"),
            "169.254.169.254 is a link-local address",
        )

    def test_explicitAllowsLinkLocal(self):
        """An explicit --allow-private lets link-local through too."""
        for ip in ("127.0.0.1", "169.254.169.254", "fe80::1"):
            self.assertIsNone(self.explicit.deniedReason(ip), ip)

    def test_neverAllowed(self):
        """Unspecified, multicast and reserved addresses are denied even
        with --allow-private."""
        cases = {
            "0.0.0.0": "0.0.0.0 is an unspecified address",
            "0.1.2.3": "0.1.2.3 is an unspecified address",
            "::": ":: is an unspecified address",
            "::ffff:0.0.0.0": "::ffff:0.0.0.0 is an unspecified address",
            "224.0.0.1": "224.0.0.1 is a multicast address",
            "ff02::1": "ff02::1 is a multicast address",
            "255.255.255.255": "255.255.255.255 is a reserved address",
        }
        for ip, reason in cases.items():
            self.assertEqual(self.explicit.deniedReason(ip), reason)

    def test_notAnAddress(self):
        """Something that is not an IP address is denied, never passed."""
        self.assertEqual(
            self.explicit.deniedReason("example.com"),
            "'example.com' is not an IP address",
        )


class ListenersTests(SynchronousTestCase):
    def test_loopbackOnly(self):
        """tcp/tcp6 on loopback, unix and haproxy around them are private."""
        for endpoints in (
            ["tcp:8080:interface=127.0.0.1"],
            ["tcp:8080:127.0.0.1"],
            ["tcp:8080:interface=127.1.2.3", "unix:/tmp/p.sock"],
            ["tcp6:8080:interface=\\:\\:1"],
            ["tcp6:8080:50:\\:\\:1"],
            ["haproxy:tcp:8080:interface=127.0.0.1"],
            ["TCP6:8080:interface=\\:\\:1"],
            ["tcp6:8080:interface=\\:\\:ffff\\:127.0.0.1"],
        ):
            self.assertTrue(listenersAreLoopbackOnly(endpoints), endpoints)

    def test_public(self):
        """Any listener that another host may reach makes it public."""
        for endpoints in (
            ["tcp:8080"],
            ["tcp:8080:interface=0.0.0.0"],
            ["tcp:8080:interface=127.0.0.1", "tcp:8081:interface=10.0.0.1"],
            ["tcp6:8080"],
            ["tcp6:8080:127.0.0.1"],  # second positional is backlog for tcp6
            ["tcp6:8080:interface=\\:\\:"],
            ["haproxy:tcp:8080"],
            ["systemd:domain=INET:index=0"],
            ["tcp:8080:interface=localhost"],
            ["ssl:443"],
        ):
            self.assertFalse(listenersAreLoopbackOnly(endpoints), endpoints)

    def test_agreesWithTwisted(self):
        """The interface we read is the one Twisted's parser binds to."""
        reactor = MemoryReactor()
        for description in (
            "tcp:8080:127.0.0.1",
            "tcp:8080:interface=127.0.0.1:backlog=5",
            "tcp:8080:backlog=5:interface=0.0.0.0",
            "tcp:8080",
            "tcp6:8080:50:\\:\\:1",
            "tcp6:8080:interface=\\:\\:1",
            "tcp6:8080",
        ):
            args, kwargs = splitEndpoint(description)
            interface = kwargs.get("interface")
            if interface is None:
                position = {"tcp": 2, "tcp6": 3}[args[0]]
                default = {"tcp": "", "tcp6": "::"}[args[0]]
                interface = args[position] if len(args) > position else default
            endpoint = serverFromString(reactor, description)
            self.assertEqual(endpoint._interface, interface, description)

    def test_splitEndpoint(self):
        """Backslash escapes, keywords, and only the first = splits."""
        self.assertEqual(
            splitEndpoint("tcp6:80:interface=\\:\\:1:x=a=b"),
            (["tcp6", "80"], {"interface": "::1", "x": "a=b"}),
        )


class _FakePool:
    """Runs work at once, as a thread pool would, but on this thread."""

    def __init__(self):
        self.calls = 0

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.calls += 1
        try:
            result = f(*args, **kwargs)
        except BaseException as e:
            onResult(False, e)
        else:
            onResult(True, result)


class _FakeReactor:
    def __init__(self):
        self.pool = _FakePool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def _basic(user, password):
    return b"Basic " + base64.b64encode(user + b":" + password)


class ProxyAuthTests(SynchronousTestCase):
    def test_pair(self):
        """--proxy-auth accepts exactly the right user and password."""
        auth = ProxyAuth.fromPair("alice:s3:cret")
        self.assertTrue(self.successResultOf(auth.verify(_basic(b"alice", b"s3:cret"))))
        self.assertFalse(self.successResultOf(auth.verify(_basic(b"alice", b"s3"))))
        self.assertFalse(self.successResultOf(auth.verify(_basic(b"bob", b"s3:cret"))))
        self.assertEqual(auth.challenge, b'Basic realm="proxyd"')

    def test_malformedHeader(self):
        """Missing, non-Basic and undecodable headers are simply False."""
        auth = ProxyAuth.fromPair("alice:pw")
        for header in (
            None,
            b"",
            b"Basic",
            b"Bearer abc",
            b"Basic !!!notbase64",
            b"Basic " + base64.b64encode(b"alicepw"),
            b"Digest " + base64.b64encode(b"alice:pw"),
        ):
            self.assertFalse(self.successResultOf(auth.verify(header)), header)

    def test_schemeCaseInsensitive(self):
        """The scheme name is case-insensitive, as RFC 9110 says."""
        auth = ProxyAuth.fromPair("alice:pw")
        header = b"bAsIc  " + base64.b64encode(b"alice:pw")
        self.assertTrue(self.successResultOf(auth.verify(header)))

    def test_badPairs(self):
        """Malformed USER:PASSWORD values are refused with a reason."""
        cases = {
            "alice": "expected USER:PASSWORD",
            ":pw": "the user name is empty",
            "alice:": "the password is empty",
        }
        assertRefused(self, ProxyAuth.fromPair, cases)

    def _file(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_filePlainAndComments(self):
        """Plain-text lines work; comments and blank lines are skipped."""
        path = self._file("# users\n\n   \nalice:one\r\n  bob:two:three \n")
        auth = ProxyAuth.fromFile(path)
        self.assertTrue(self.successResultOf(auth.verify(_basic(b"alice", b"one"))))
        self.assertTrue(self.successResultOf(auth.verify(_basic(b"bob", b"two:three "))))
        self.assertFalse(self.successResultOf(auth.verify(_basic(b"bob", b"one"))))

    def test_fileBcrypt(self):
        """htpasswd bcrypt ($2y$) lines are checked in the thread pool and
        successes are cached, so the second check uses no thread."""
        hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
        hashed = "$2y$" + hashed[4:]
        reactor = _FakeReactor()
        auth = ProxyAuth.fromFile(self._file(f"carol:{hashed}\n"), reactor)
        good = _basic(b"carol", b"secret")
        self.assertTrue(self.successResultOf(auth.verify(good)))
        self.assertEqual(reactor.pool.calls, 1)
        self.assertTrue(self.successResultOf(auth.verify(good)))
        self.assertEqual(reactor.pool.calls, 1)
        bad = _basic(b"carol", b"guess")
        self.assertFalse(self.successResultOf(auth.verify(bad)))
        self.assertFalse(self.successResultOf(auth.verify(bad)))
        self.assertEqual(reactor.pool.calls, 3)

    def test_bcryptWaitsForThread(self):
        """A bcrypt check does not finish on the reactor thread: the
        Deferred waits for the pool."""
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        queued = []

        class Pool:
            def callInThreadWithCallback(self, onResult, f, *args):
                queued.append((onResult, f, args))

        reactor = _FakeReactor()
        reactor.pool = Pool()
        auth = ProxyAuth.fromFile(self._file(f"dan:{hashed}\n"), reactor)
        d = auth.verify(_basic(b"dan", b"pw"))
        self.assertNoResult(d)
        [(onResult, f, args)] = queued
        onResult(True, f(*args))
        self.assertTrue(self.successResultOf(d))

    def test_cacheBounded(self):
        """The success cache never grows past its size, oldest out first."""
        hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        reactor = _FakeReactor()
        auth = ProxyAuth.fromFile(self._file(f"eve:{hashed}\n"), reactor)
        auth.cacheSize = 2
        for i in range(5):
            auth._remember(True, b"key%d" % i)
        self.assertEqual(list(auth._verified), [b"key3", b"key4"])

    def test_badFiles(self):
        """Bad lines are refused with their line number."""
        cases = {
            "alice:pw\nnocolon\n": "line 2: expected USER:PASSWORD",
            "alice:pw\nalice:pw2\n": "line 2: user 'alice' appears twice",
            "# only comments\n\n": "no users in file",
            "bob:$2y$10$short\n": "line 1: malformed bcrypt hash",
            "bob:$apr1$abc$def\n": "line 1: unsupported hash; use bcrypt "
            "(htpasswd -B) or a plain-text password",
            "bob:{SHA}abc=\n": "line 1: unsupported hash; use bcrypt "
            "(htpasswd -B) or a plain-text password",
        }
        assertRefused(self, lambda text: ProxyAuth.fromFile(self._file(text)), cases)

    def test_unreadableFile(self):
        """A missing file raises OSError for the caller to word."""
        self.assertRaises(OSError, ProxyAuth.fromFile, self.mktemp())
