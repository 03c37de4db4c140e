# -*- test-case-name: tests.unit.test_headers -*-
"""
Header rules a proxy applies between its two sides: hop-by-hop stripping
(RFC 9110 section 7.6.1 plus the proxy ones) and Via; and the passage
between wire pairs and the L{Headers} plugins edit.
"""

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    ]
)

# Framing headers are re-made by proxyd for the side it writes to.
FRAMING = frozenset([b"content-length", b"transfer-encoding"])

VIA = b"Via"
VIA_VALUE = b"1.1 proxyd"


def connectionTokens(headers):
    """The lower-cased tokens of every Connection header."""
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


def endToEnd(headers, keepUpgrade=False, keepFraming=True):
    """
    The headers to forward: without the hop-by-hop ones and without every
    header named in Connection.  Repeated headers keep their order.  With
    C{keepUpgrade}, C{Upgrade} and C{Connection: upgrade} survive (a WebSocket
    handshake in flight).
    """
    named = connectionTokens(headers)
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname in FRAMING:
            # Framing is never dropped because Connection names it (that
            # would let a client smuggle its body as a second request).
            if keepFraming:
                out.append((name, value))
            continue
        if lname in HOP_BY_HOP or lname in named:
            if keepUpgrade and lname == b"upgrade":
                out.append((name, value))
            continue
        out.append((name, value))
    if keepUpgrade:
        out.append((b"Connection", b"upgrade"))
    return out


def addVia(headers, version=b"1.1"):
    """Append proxyd to Via (RFC 9110 section 7.6.3)."""
    headers.append((VIA, version + b" proxyd" if version != b"1.1" else VIA_VALUE))
    return headers


# What plugins may not decide: hop-by-hop and framing headers (proxyd's)
# and Host (which proxyd writes first, from the request).
_NOT_FROM_PLUGINS = HOP_BY_HOP | FRAMING | frozenset([b"host"])
_NOT_FROM_PLUGINS_RESPONSE = HOP_BY_HOP | FRAMING


def toHeaders(pairs):
    """Wire (name, value) pairs as the L{Headers} a plugin sees."""
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


# Filling plugin-visible Headers runs twice per exchange whenever a plugin
# is on, and Headers.addRawHeader re-checks each name and value.  proxyd's
# parser has already refused what those checks clean up (line breaks in
# values, names that are not tokens), so where this Twisted keeps its
# headers in a name -> values dict under the names addRawHeader makes
# (checked once below, against the public API), proxyd fills that dict
# directly; anywhere else it uses the public API.
_canonical = {}


def _canonicalName(name):
    """C{name} spelt as L{Headers} keys it, learnt from Headers once per spelling (bounded)."""
    probe = Headers()
    probe.addRawHeader(name, b"")
    (key,) = probe._rawHeaders
    if len(_canonical) >= 4096:
        _canonical.clear()  # a hostile client's endless spellings
    _canonical[name] = key
    return key


def _fillDirect(headers, pairs):
    """Add wire C{pairs} to a fresh L{Headers} (see above)."""
    raw = headers._rawHeaders
    canonical = _canonical
    for name, value in pairs:
        key = canonical.get(name) or _canonicalName(name)
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    return headers


def _fillsLikeTwisted():
    sample = [(b"content-TYPE", b"a"), (b"X-Two", b"1"), (b"x-two", b"2"), (b"Etag", b"e")]
    public = Headers()
    for name, value in sample:
        public.addRawHeader(name, value)
    try:
        fast = _fillDirect(Headers(), sample)
        return type(fast._rawHeaders) is dict and fast._rawHeaders == public._rawHeaders and (
            fast.getRawHeaders(b"x-two") == [b"1", b"2"]
        )
    except Exception:
        return False
    finally:
        _canonical.clear()


def _fillPublic(headers, pairs):
    """Add wire C{pairs} to L{Headers} through its public API."""
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


_fill = _fillDirect if _fillsLikeTwisted() else _fillPublic


def requestHeaders(head, host):
    """
    The L{Headers} request hooks see, in one pass over the wire pairs:
    C{Host: host} first, then the end-to-end headers without framing ones;
    C{Upgrade} is kept on a GET that asks for one (a WebSocket handshake).
    """
    wire = head.headers
    named = connectionTokens(wire)
    keepUpgrade = head.method == b"GET"
    pairs = [(b"Host", host)]
    pairs += [
        (name, value)
        for name, value in wire
        if not ((lname := name.lower()) in _NOT_FROM_PLUGINS or lname in named)
        or (keepUpgrade and lname == b"upgrade")
    ]
    return _fill(Headers(), pairs)


def responseHeaders(wire):
    """The L{Headers} response hooks see: end-to-end, no framing headers."""
    named = connectionTokens(wire)
    return _fill(Headers(), [
        (name, value)
        for name, value in wire
        if not ((lname := name.lower()) in _NOT_FROM_PLUGINS_RESPONSE or lname in named)
    ])


def wirePairs(headers, keepUpgrade=False):
    """
    The L{Headers} a plugin left, as wire pairs without hop-by-hop,
    framing or Host headers (C{Upgrade} kept with C{keepUpgrade}).
    """
    out = []
    for name, values in headers.getAllRawHeaders():
        lname = name.lower()
        if lname in _NOT_FROM_PLUGINS and not (keepUpgrade and lname == b"upgrade"):
            continue
        for value in values:
            out.append((name, value))
    return out
