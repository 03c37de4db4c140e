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


def toHeaders(pairs):
    """Wire (name, value) pairs as the L{Headers} a plugin sees."""
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


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
