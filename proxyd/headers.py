# -*- test-case-name: tests.unit.test_headers -*-
"""
Header rules a proxy applies between its two sides: hop-by-hop stripping
(RFC 9110 section 7.6.1 plus the proxy ones) and Via.
"""

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
