"""
Tests for L{proxyd.sniff}: telling TLS from HTTP from anything else after a
CONNECT, and the ClientHello reader, on hellos captured from Python's own
TLS client and on hand-built ones.
"""

import functools
import ssl
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from proxyd.sniff import (
    HTTP,
    MAX_HELLO,
    MAX_RECORDS,
    NEED_MORE,
    OTHER,
    TLS,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    classify,
)
from tests.unit.tlshello import clientHello

# Bounded so the whole file runs in a few seconds.
_PROPERTY = settings(max_examples=200, deadline=None)


# The ClientHello that Python's ssl module (OpenSSL) sends: L{clientHello},
# made once per set of arguments.
captured = functools.lru_cache(maxsize=None)(clientHello)


# Hand-built hellos, following RFC 8446 section 4.1.2.


def u16(n):
    return struct.pack("!H", n)


def vec8(data):
    return bytes([len(data)]) + data


def vec16(data):
    return u16(len(data)) + data


def extension(kind, body):
    return u16(kind) + vec16(body)


def sniExtension(*names, nameType=0):
    if isinstance(nameType, int):
        nameType = [nameType] * len(names)
    entries = b"".join(bytes([t]) + vec16(n) for t, n in zip(nameType, names))
    return extension(0, vec16(entries))


def alpnExtension(*names):
    return extension(16, vec16(b"".join(vec8(n) for n in names)))


def versionsExtension(*versions):
    return extension(43, vec8(b"".join(u16(v) for v in versions)))


def helloBody(
    extensions=(),
    legacy=0x0303,
    sessionId=b"\x11" * 32,
    suites=b"\x13\x01\x13\x02",
    compression=b"\x00",
    withExtensions=True,
):
    body = u16(legacy) + b"\x42" * 32 + vec8(sessionId)
    body += vec16(suites) + vec8(compression)
    if withExtensions:
        body += vec16(b"".join(extensions))
    return body


def handshake(body, kind=1):
    return bytes([kind]) + struct.pack("!I", len(body))[1:] + body


def records(message, sizes=None, kind=0x16, version=0x0301):
    """
    Frame C{message} in TLS records; C{sizes} gives each record's payload
    length, the last record taking whatever is left.
    """
    out, pos = [], 0
    for size in list(sizes or []) + [len(message)]:
        chunk = message[pos : pos + size]
        if chunk:
            out.append(bytes([kind]) + u16(version) + vec16(chunk))
        pos += len(chunk)
    return b"".join(out)


def hello(*extensions, **kw):
    """A whole hand-built ClientHello in one record."""
    return records(handshake(helloBody(extensions, **kw)))


def rerecord(raw, sizes):
    """Re-frame the handshake message inside single-record C{raw}."""
    return records(raw[5:], sizes)


def parse(data, maxSize=MAX_HELLO):
    return ClientHelloReader(maxSize).feed(data)


class ClassifyTests(SynchronousTestCase):
    """
    L{classify} looks at the first bytes in a CONNECT tunnel.
    """

    def test_tls(self):
        self.assertEqual(classify(captured()), TLS)
        self.assertEqual(classify(b"\x16\x03"), TLS)
        self.assertEqual(classify(b"\x16\x03\x01\x02\x00\x01"), TLS)

    def test_http(self):
        for data in [
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"POST ",
            b"HEAD /x HTTP/1.0\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PROPFIND /dav HTTP/1.1\r\n",
            b"MKCALENDAR /c HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            bytearray(b"PUT /a HTTP/1.1\r\n"),
            memoryview(b"DELETE /a HTTP/1.1\r\n"),
        ]:
            self.assertEqual(classify(data), HTTP, data)

    def test_needMore(self):
        """
        While the bytes could still become TLS or a known method and its
        space, the answer is NEED_MORE.
        """
        for data in [b"", b"\x16", b"G", b"GE", b"GET", b"P", b"PROPFIN", b"MKCALENDAR", b"M-"]:
            self.assertEqual(classify(data), NEED_MORE, data)

    def test_other(self):
        for data in [
            b"\x00",
            b"\x16\x02\x00",
            b"\x80\x2e\x01\x00\x02",  # SSLv2 hello
            b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n",
            b"get / HTTP/1.1\r\n",
            b"GETX / HTTP/1.1\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b" GET / HTTP/1.1\r\n",
            b"HELLO world\r\n",
            b"A" * 100,
        ]:
            self.assertEqual(classify(data), OTHER, data)

    def test_h2PriorKnowledge(self):
        """
        The HTTP/2 connection preface is not HTTP proxyd speaks: it is
        tunnelled blind.
        """
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        self.assertEqual(classify(preface), OTHER)
        self.assertEqual(classify(preface[:3]), OTHER)
        self.assertEqual(classify(preface[:2]), NEED_MORE)  # could be PROPFIND


class CapturedHelloTests(SynchronousTestCase):
    """
    Hellos sent by OpenSSL through Python's ssl module.
    """

    def test_sni(self):
        raw = captured()
        result = parse(raw)
        self.assertIsInstance(result, ClientHello)
        self.assertEqual(result.sni, "example.com")
        self.assertEqual(result.alpn, [])
        self.assertEqual(result.raw, raw)
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertEqual(result.versions, [0x0304, 0x0303])

    def test_sniLowerCased(self):
        self.assertEqual(parse(captured("WWW.Example.COM")).sni, "www.example.com")

    def test_noSni(self):
        result = parse(captured(None))
        self.assertIsNone(result.sni)
        self.assertEqual(result.versions, [0x0304, 0x0303])

    def test_alpn(self):
        result = parse(captured(alpn=("h2", "http/1.1")))
        self.assertEqual(result.alpn, ["h2", "http/1.1"])
        self.assertEqual(result.sni, "example.com")

    def test_tls12Only(self):
        """
        A TLS 1.2-only client sends no supported_versions: its versions are
        the legacy_version alone.
        """
        result = parse(captured(maxVersion=ssl.TLSVersion.TLSv1_2))
        self.assertIsNone(result.supported_versions)
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertEqual(result.versions, [0x0303])
        self.assertEqual(result.sni, "example.com")

    def test_tls13Only(self):
        result = parse(captured(minVersion=ssl.TLSVersion.TLSv1_3))
        self.assertEqual(result.legacy_version, 0x0303)
        self.assertEqual(result.versions, [0x0304])

    def test_resultNoneUntilComplete(self):
        raw = captured()
        reader = ClientHelloReader()
        self.assertIsNone(reader.result)
        self.assertIsNone(reader.feed(raw[:-1]))
        self.assertIsNone(reader.result)
        self.assertEqual(reader.feed(raw[-1:]), reader.result)
        self.assertEqual(reader.result.raw, raw)

    def test_bytesAfterHelloKept(self):
        """
        Bytes after the hello, in the same segment or fed later, are kept in
        C{raw} so nothing is lost when they are replayed.
        """
        raw = captured()
        extra = b"\x14\x03\x03\x00\x01\x01"  # a ChangeCipherSpec record
        reader = ClientHelloReader()
        result = reader.feed(raw + extra)
        self.assertEqual(result.sni, "example.com")
        self.assertEqual(result.raw, raw + extra)
        result = reader.feed(b"more")
        self.assertEqual(result.raw, raw + extra + b"more")
        self.assertEqual(reader.result, result)

    def test_twoRecords(self):
        raw = captured(alpn=("h2", "http/1.1"))
        split = rerecord(raw, [100])
        self.assertEqual(len(split), len(raw) + 5)
        result = parse(split)
        self.assertEqual((result.sni, result.alpn), ("example.com", ["h2", "http/1.1"]))
        self.assertEqual(result.raw, split)

    def test_threeRecords(self):
        """
        Record boundaries may fall anywhere, even inside the 4-byte handshake
        header.
        """
        raw = captured(alpn=("h2",))
        for sizes in ([2, 300], [1, 1], [60, 60], [4, 1]):
            result = parse(rerecord(raw, sizes))
            self.assertEqual((result.sni, result.alpn), ("example.com", ["h2"]), sizes)

    def test_byteByByte(self):
        raw = captured()
        reader = ClientHelloReader()
        for i in range(len(raw) - 1):
            self.assertIsNone(reader.feed(raw[i : i + 1]))
        self.assertEqual(reader.feed(raw[-1:]), parse(raw))

    def test_everySplitPoint(self):
        for raw in [captured(alpn=("h2",)), rerecord(captured(), [3, 200])]:
            whole = parse(raw)
            for i in range(len(raw) + 1):
                reader = ClientHelloReader()
                reader.feed(raw[:i])
                self.assertEqual(reader.feed(raw[i:]), whole, i)

    def test_recordsFedByteByByte(self):
        raw = rerecord(captured(), [50, 50, 50])
        reader = ClientHelloReader()
        for i in range(len(raw)):
            reader.feed(raw[i : i + 1])
        self.assertEqual(reader.result.sni, "example.com")


class HandBuiltHelloTests(SynchronousTestCase):
    """
    Hellos built here, to reach what real clients seldom send.
    """

    def test_ipv4LiteralSni(self):
        """
        RFC 6066 forbids IP literals in SNI but some clients send them: they
        are kept as given, for the caller to decide.
        """
        self.assertEqual(parse(hello(sniExtension(b"192.0.2.1"))).sni, "192.0.2.1")

    def test_ipv6LiteralSni(self):
        self.assertEqual(parse(hello(sniExtension(b"2001:DB8::1"))).sni, "2001:DB8::1")

    def test_noExtensions(self):
        """
        Before TLS 1.3 the extensions block may be missing altogether.
        """
        result = parse(hello(withExtensions=False))
        self.assertEqual((result.sni, result.alpn), (None, []))
        self.assertEqual(result.versions, [0x0303])

    def test_emptyExtensions(self):
        self.assertIsNone(parse(hello()).sni)

    def test_grease(self):
        """
        GREASE versions (RFC 8701) are dropped; ALPN names survive byte for
        byte as latin-1.
        """
        result = parse(
            hello(
                extension(0x1A1A, b""),
                versionsExtension(0x2A2A, 0x0304, 0x0303),
                alpnExtension(b"\x3a\x3a", b"h2"),
                extension(0xFAFA, b"\x00"),
            )
        )
        self.assertEqual(result.supported_versions, [0x0304, 0x0303])
        self.assertEqual(result.alpn, ["\x3a\x3a", "h2"])
        self.assertEqual(result.alpn[0].encode("latin-1"), b"\x3a\x3a")

    def test_otherNameTypeIgnored(self):
        self.assertIsNone(parse(hello(sniExtension(b"whatever", nameType=7))).sni)
        result = parse(hello(sniExtension(b"x", b"a.example", nameType=[9, 0])))
        self.assertEqual(result.sni, "a.example")

    def test_acceptableNames(self):
        for name in [b"a", b"localhost", b"_srv.example.com", b"xn--bcher-kva.example", b"a" * 63 + b".com"]:
            self.assertEqual(parse(hello(sniExtension(name))).sni, name.decode(), name)

    def test_badNames(self):
        for name in [
            b"exa mple.com",
            b"-bad.example",
            b"bad-.example",
            b"a..example",
            b"example.com.",
            b".example.com",
            b"b\xc3\xbccher.example",
            b"a\x00b.example",
            b"1.2.3.999",
            b"a" * 64 + b".com",
            (b"a" * 60 + b".") * 5 + b"com",
            b"fe80::1%eth0",
            b"::g",
        ]:
            exc = self.assertRaises(ClientHelloError, parse, hello(sniExtension(name)))
            self.assertIn("SNI", str(exc), name)

    def test_truncated(self):
        """
        Every prefix of a valid hello is simply not complete yet.
        """
        raw = rerecord(hello(sniExtension(b"example.com"), alpnExtension(b"h2")), [20])
        for i in range(len(raw)):
            self.assertIsNone(ClientHelloReader().feed(raw[:i]), i)
        self.assertEqual(parse(raw).sni, "example.com")

    def test_oversizedDeclared(self):
        """
        A handshake header claiming more than the bound is refused as soon as
        it arrives, before the rest is buffered.
        """
        start = b"\x16\x03\x01\x40\x00" + b"\x01\x00\x50\x00"
        exc = self.assertRaises(ClientHelloError, ClientHelloReader().feed, start)
        self.assertEqual(str(exc), f"ClientHello larger than {MAX_HELLO} bytes")

    def test_oversizedReal(self):
        big = hello(extension(21, b"\x00" * 17000))  # padding, over two records
        self.assertRaises(ClientHelloError, parse, rerecord(big, [16000]))
        raw = hello(extension(21, b"\x00" * 1000))
        self.assertEqual(parse(raw, maxSize=2000).sni, None)
        exc = self.assertRaises(ClientHelloError, parse, raw, maxSize=1000)
        self.assertEqual(str(exc), "ClientHello larger than 1000 bytes")

    def test_tooManyRecords(self):
        message = handshake(helloBody([sniExtension(b"example.com")]))
        fine = records(message, [1] * (MAX_RECORDS - 1))
        self.assertEqual(parse(fine).sni, "example.com")
        tooMany = records(message, [1] * MAX_RECORDS)
        self.assertRaises(ClientHelloError, parse, tooMany)

    def assertMalformed(self, data, reason=None):
        exc = self.assertRaises(ClientHelloError, parse, data)
        if reason is not None:
            self.assertIn(reason, str(exc))
        return exc

    def test_notHandshake(self):
        self.assertMalformed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a TLS handshake")
        self.assertMalformed(b"\x17\x03\x03\x00\x05hello", "not a TLS handshake")
        self.assertMalformed(b"\x00")
        self.assertMalformed(b"\x16\x02", "record version")

    def test_sslv2(self):
        # An SSLv2-compatible CLIENT-HELLO with a 2-byte record header.
        v2 = b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x00" * 21 + b"\x00" * 16
        self.assertMalformed(v2, "SSLv2")

    def test_notClientHello(self):
        self.assertMalformed(records(handshake(b"\x03\x03" + b"\x00" * 40, kind=2)), "not a ClientHello")
        # Known from the first handshake byte, before the record is whole.
        self.assertMalformed(b"\x16\x03\x01\x01\x00\x02", "not a ClientHello")

    def test_recordLengths(self):
        self.assertMalformed(b"\x16\x03\x01\x00\x00", "empty")
        self.assertMalformed(b"\x16\x03\x01\x40\x01", "too long")

    def test_nonHandshakeRecordInTheMiddle(self):
        raw = rerecord(captured(), [100])
        alert = b"\x15\x03\x03\x00\x02\x02\x28"
        self.assertMalformed(raw[:105] + alert + raw[105:], "not a TLS handshake")

    def test_recordRunsPastHello(self):
        """
        A second handshake message coalesced after the hello is refused (a
        client has nothing else to send yet).
        """
        message = handshake(helloBody()) + handshake(b"", kind=20)
        self.assertMalformed(records(message), "runs past")
        self.assertMalformed(records(message, [len(message) - 2]), "runs past")

    def test_badBodies(self):
        ext = [sniExtension(b"example.com")]
        cases = [
            (helloBody(legacy=0x0200), "legacy_version"),
            (helloBody(sessionId=b"\x00" * 33), "session id"),
            (helloBody(suites=b"\x13"), "cipher suites"),
            (helloBody(suites=b""), "cipher suites"),
            (helloBody(suites=b"\x13\x01\x13"), "cipher suites"),
            (helloBody(compression=b""), "compression"),
            (helloBody(ext)[:-1], "overruns"),
            (helloBody(ext) + b"\x00", "trailing"),
            (helloBody(ext)[:60], None),
            (helloBody(ext + ext), "duplicate"),
            (helloBody([extension(0, b"\x00\x00")]), "server_name"),
            (helloBody([extension(0, b"\x00\x03\x00\x00\x00")]), "host_name"),
            (helloBody([extension(0, b"\x00\x04\x00\x00\x09a")]), "overruns"),
            (helloBody([extension(0, vec16(b"\x00" + vec16(b"a")) + b"x")]), "trailing"),
            (helloBody([sniExtension(b"a.example", b"b.example")]), "two SNI"),
            (helloBody([extension(16, b"\x00\x00")]), "ALPN"),
            (helloBody([extension(16, vec16(b"\x00"))]), "ALPN"),
            (helloBody([extension(43, b"\x03\x03\x04\x03")]), "supported_versions"),
            (helloBody([extension(43, b"\x00")]), "supported_versions"),
            (helloBody([u16(5) + u16(10) + b"abc"]), "overruns"),
            (helloBody([u16(5)]), None),
        ]
        for body, reason in cases:
            exc = self.assertMalformed(records(handshake(body)), reason)
            self.assertLess(len(str(exc)), 60)

    def test_errorIsSticky(self):
        reader = ClientHelloReader()
        first = self.assertRaises(ClientHelloError, reader.feed, b"\x15")
        second = self.assertRaises(ClientHelloError, reader.feed, captured())
        self.assertIs(first, second)
        self.assertIsNone(reader.result)


# Property tests.

_labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
_names = st.lists(_labels, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".example")


@st.composite
def validBodies(draw, names=_names.map(str.encode)):
    """A hand-built ClientHello body with a random mix of extensions."""
    exts = [extension(kind, b"\x00" * kind) for kind in draw(st.sets(st.integers(44, 60), max_size=3))]
    if draw(st.booleans()):
        exts.append(sniExtension(draw(names)))
    if draw(st.booleans()):
        protos = draw(st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=3))
        exts.append(alpnExtension(*protos))
    if draw(st.booleans()):
        exts.append(versionsExtension(*draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4))))
    if exts:
        exts.insert(draw(st.integers(0, len(exts) - 1)), exts.pop())
    return helloBody(exts, sessionId=draw(st.binary(max_size=32)))


def framed(draw, body):
    """C{body} as a handshake message spread over random records."""
    sizes = draw(st.lists(st.integers(1, 200), max_size=4))
    return records(handshake(body), sizes)


@st.composite
def validHellos(draw):
    return framed(draw, draw(validBodies()))


def splitAt(data, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def feedAll(chunks):
    reader = ClientHelloReader()
    for chunk in chunks:
        reader.feed(chunk)
    return reader.result


def mutate(draw, data):
    """C{data} with up to three bytes changed, removed or added."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "delete", "insert", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 4))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[i:]
    return bytes(data)


@st.composite
def mutatedHellos(draw):
    """A valid hello, captured or hand-built, damaged anywhere."""
    captures = st.sampled_from([captured(), captured(alpn=("h2",))])
    return mutate(draw, draw(st.one_of(validHellos(), captures)))


@st.composite
def mutatedBodies(draw):
    """
    A damaged hello body in correct framing, so that it reaches the body
    parser rather than waiting for bytes that never come.
    """
    names = st.one_of(_names.map(str.encode), st.binary(min_size=1, max_size=20))
    body = mutate(draw, draw(validBodies(names)))
    return framed(draw, body) if body else b""


def outcome(chunks):
    """The reader's result, or its error's message; other errors propagate."""
    try:
        return feedAll(chunks)
    except ClientHelloError as e:
        return str(e)


_anyBytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"\x16\x03" + b),
    st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b[:2] + b"\x01" + b[2:]),
    mutatedHellos(),
    mutatedBodies(),
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever arrives, however it is split, the reader raises nothing but
    L{ClientHelloError}, and the split never changes the answer.
    """

    @_PROPERTY
    @given(_anyBytes, st.lists(st.integers(0, 400), max_size=8))
    def test_onlyClientHelloError(self, data, cuts):
        """
        Arbitrary and damaged input gives a result or a L{ClientHelloError},
        the same one however the bytes are split.
        """
        self.assertEqual(outcome(splitAt(data, cuts)), outcome([data]))

    @_PROPERTY
    @given(validHellos(), st.lists(st.integers(0, 600), max_size=8))
    def test_splitsDoNotMatter(self, data, cuts):
        whole = feedAll([data])
        self.assertIsNotNone(whole)
        self.assertEqual(feedAll(splitAt(data, cuts)), whole)
        self.assertEqual(whole.raw, data)
