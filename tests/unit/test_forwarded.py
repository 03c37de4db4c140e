"""
Tests for L{proxyd.forwarded}: the forwarding headers reverse mode sets,
and the client's own that it drops.
"""

from twisted.trial.unittest import SynchronousTestCase

from proxyd.forwarded import FORWARDING, forwardingHeaders, quoteValue, replaceForwarding


class ForwardingHeadersTests(SynchronousTestCase):
    """L{forwardingHeaders} says who the client is, how and to what host it came."""

    def test_ipv4(self):
        """An IPv4 client over https with a Host."""
        self.assertEqual(
            forwardingHeaders("192.0.2.7", "https", b"shop.example.com"),
            [
                (b"X-Forwarded-For", b"192.0.2.7"),
                (b"X-Forwarded-Proto", b"https"),
                (b"X-Forwarded-Host", b"shop.example.com"),
                (b"Forwarded", b"for=192.0.2.7;proto=https;host=shop.example.com"),
            ],
        )

    def test_ipv6(self):
        """An IPv6 client is bare in X-Forwarded-For, bracketed and quoted in Forwarded."""
        headers = dict(forwardingHeaders("2001:db8::1", "http", b"example.com"))
        self.assertEqual(headers[b"X-Forwarded-For"], b"2001:db8::1")
        self.assertEqual(headers[b"Forwarded"], b'for="[2001:db8::1]";proto=http;host=example.com')

    def test_ipv6Normalised(self):
        """The address is written in its canonical form."""
        headers = dict(forwardingHeaders("2001:DB8:0:0::1", "http", None))
        self.assertEqual(headers[b"X-Forwarded-For"], b"2001:db8::1")

    def test_ipv4Mapped(self):
        """An IPv4 client seen by a dual-stack listener is reported as IPv4."""
        headers = dict(forwardingHeaders("::ffff:192.0.2.7", "https", None))
        self.assertEqual(headers[b"X-Forwarded-For"], b"192.0.2.7")
        self.assertEqual(headers[b"Forwarded"], b"for=192.0.2.7;proto=https")

    def test_unixClient(self):
        """A client with no IP address (a unix socket) is C{unknown}."""
        self.assertEqual(
            forwardingHeaders(None, "http", b"example.com"),
            [
                (b"X-Forwarded-For", b"unknown"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"example.com"),
                (b"Forwarded", b"for=unknown;proto=http;host=example.com"),
            ],
        )

    def test_notAnAddress(self):
        """Something that is not an IP address is never written as one."""
        for client in ["", "example.com", "1.2.3.4\r\nX: y", "1.2.3.4, 5.6.7.8"]:
            headers = dict(forwardingHeaders(client, "http", None))
            self.assertEqual(headers[b"X-Forwarded-For"], b"unknown", client)
            self.assertEqual(headers[b"Forwarded"], b"for=unknown;proto=http", client)

    def test_noHost(self):
        """Without a Host there is no X-Forwarded-Host and no host=."""
        self.assertEqual(
            forwardingHeaders("192.0.2.7", "http", None),
            [
                (b"X-Forwarded-For", b"192.0.2.7"),
                (b"X-Forwarded-Proto", b"http"),
                (b"Forwarded", b"for=192.0.2.7;proto=http"),
            ],
        )

    def test_hostWithPortQuoted(self):
        """A Host with a port, or an IPv6 one, is not a token: quoted in Forwarded, unchanged elsewhere."""
        for host, forwarded in [
            (b"Example.com:8443", b'host="Example.com:8443"'),
            (b"[2001:db8::2]:443", b'host="[2001:db8::2]:443"'),
            (b"[::1]", b'host="[::1]"'),
        ]:
            headers = dict(forwardingHeaders("192.0.2.7", "https", host))
            self.assertEqual(headers[b"X-Forwarded-Host"], host)
            self.assertEqual(headers[b"Forwarded"], b"for=192.0.2.7;proto=https;" + forwarded)

    def test_hostWhitespace(self):
        """Spaces around the Host value are not part of it."""
        headers = dict(forwardingHeaders("192.0.2.7", "http", b" example.com\t"))
        self.assertEqual(headers[b"X-Forwarded-Host"], b"example.com")

    def test_hostileHost(self):
        """A Host that is not a clean host[:port] is left out, never copied into a header."""
        for host in [
            b"example.com\r\nX-Injected: 1",
            b"example.com\nX: y",
            b"example.com\r",
            b"example.com\x00evil",
            b'example.com";for=1.2.3.4',
            b"example.com;for=1.2.3.4",
            b"example.com, evil.com",
            b"example.com,evil.com",
            b"a b",
            b"example.com\\",
            b"caf\xc3\xa9.example",
            b"example.com\x7f",
            b"user@example.com",
            b"example.com/path",
            b"example.com:notaport",
            b"",
            b"   ",
        ]:
            headers = forwardingHeaders("192.0.2.7", "https", host)
            self.assertEqual(
                headers,
                [
                    (b"X-Forwarded-For", b"192.0.2.7"),
                    (b"X-Forwarded-Proto", b"https"),
                    (b"Forwarded", b"for=192.0.2.7;proto=https"),
                ],
                host,
            )

    def test_badProto(self):
        """The scheme is the listener's, http or https; anything else is a bug."""
        for proto in ["ftp", "HTTP", "https\r\n", ""]:
            self.assertRaises(ValueError, forwardingHeaders, "192.0.2.7", proto, None)

    def test_noControlBytesEver(self):
        """Whatever the inputs, no value holds a byte a header may not."""
        for client in [None, "192.0.2.7", "::1", "bad\r\n"]:
            for host in [None, b"a.test", b"a.test:1", b"a\r\nb", b"\x00", b"[::1]:2"]:
                for name, value in forwardingHeaders(client, "https", host):
                    self.assertFalse(any(c < 0x21 or c > 0x7E for c in value), (client, host, value))


class QuoteValueTests(SynchronousTestCase):
    """L{quoteValue} writes an RFC 7239 value as a token or a quoted-string."""

    def test_token(self):
        """A token stands alone."""
        self.assertEqual(quoteValue(b"example.com"), b"example.com")
        self.assertEqual(quoteValue(b"unknown"), b"unknown")

    def test_quoted(self):
        """Anything else is quoted, with quotes and backslashes escaped."""
        self.assertEqual(quoteValue(b"[::1]:80"), b'"[::1]:80"')
        self.assertEqual(quoteValue(b'a"b\\c'), b'"a\\"b\\\\c"')
        self.assertEqual(quoteValue(b"a;b=c,d"), b'"a;b=c,d"')
        self.assertEqual(quoteValue(b""), b'""')

    def test_refused(self):
        """Control and non-ASCII bytes are never quoted into a header."""
        for value in [b"a\r\nb", b"a\x00", b"a\tb", b"\x7f", b"\xc3\xa9"]:
            self.assertRaises(ValueError, quoteValue, value)


class ReplaceForwardingTests(SynchronousTestCase):
    """L{replaceForwarding} drops what the client claimed and adds proxyd's own."""

    def test_dropsEveryVariant(self):
        """Every forwarding header the client sent is dropped, in any case, with _ for -, repeated or not."""
        spoofed = []
        for name in sorted(FORWARDING):
            text = name.decode()
            for variant in (text, text.upper(), text.title(), text.replace("-", "_"), text.title().replace("-", "_")):
                spoofed.append((variant.encode(), b"6.6.6.6"))
        spoofed.append((b"X-Forwarded-For ", b"6.6.6.6"))
        headers = [(b"Host", b"example.com")] + spoofed + [(b"Accept", b"*/*"), (b"X-Forwarded-For", b"7.7.7.7")]
        out = replaceForwarding(headers, "192.0.2.7", "https", b"example.com")
        self.assertEqual(out, [(b"Host", b"example.com"), (b"Accept", b"*/*")] + forwardingHeaders(
            "192.0.2.7", "https", b"example.com"))
        self.assertNotIn(b"6.6.6.6", b"".join(value for _, value in out))

    def test_specNames(self):
        """The names the forwarding headers go by are all dropped."""
        for name in [b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                     b"x-forwarded-port", b"x-real-ip"]:
            self.assertIn(name, FORWARDING)
            self.assertEqual(name, name.lower())

    def test_othersKept(self):
        """Other headers, repeated ones included, keep their order and case; Host is unchanged."""
        headers = [(b"Host", b"Example.com:8443"), (b"Cookie", b"a=1"), (b"cookie", b"b=2"), (b"X-Forwarded", b"k")]
        out = replaceForwarding(headers, "192.0.2.7", "http", b"Example.com:8443")
        self.assertEqual(out[:4], headers)
        self.assertEqual(dict(out[4:])[b"X-Forwarded-Host"], b"Example.com:8443")

    def test_newList(self):
        """The given list is not changed."""
        headers = [(b"X-Forwarded-For", b"6.6.6.6")]
        replaceForwarding(headers, None, "http", None)
        self.assertEqual(headers, [(b"X-Forwarded-For", b"6.6.6.6")])

    def test_hostileHostDropsClaims(self):
        """A hostile Host still drops the client's claims; proxyd then names no host."""
        headers = [(b"X-Forwarded-Host", b"evil.com")]
        out = replaceForwarding(headers, "192.0.2.7", "http", b"a\r\nX-Forwarded-Host: evil.com")
        self.assertEqual(out, forwardingHeaders("192.0.2.7", "http", None))
