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


# The Headers plugins see are made twice per exchange whenever a plugin is
# on, and Headers.addRawHeader re-checks each name and value.  proxyd's
# parser has already refused what those checks clean up (line breaks in
# values, names that are not tokens), so where this Twisted keeps its
# headers in a name -> values dict under the names addRawHeader makes
# (checked once below, against the public API), proxyd fills that dict
# directly; anywhere else it uses the public API.
#
# Either way names are handled as Headers spells them (its keys, learnt
# once per wire spelling): which headers to leave out is then one set
# lookup on a name whose hash is cached, not a lower() per header.


def _headerKey(name):
    """C{name} as L{Headers} spells it (C{b"content-TYPE"} -> C{b"Content-Type"}, C{b"te"} -> C{b"TE"})."""
    probe = Headers()
    probe.addRawHeader(name, b"")
    ((key, _),) = probe.getAllRawHeaders()
    return key


_canonical = {}


def _canonicalName(name):
    """L{_headerKey}, remembered per spelling (bounded)."""
    key = _headerKey(name)
    if len(_canonical) >= 4096:
        _canonical.clear()  # a hostile client's endless spellings
    _canonical[name] = key
    return key


def _keys(names):
    return frozenset(_headerKey(name) for name in names)


# What plugins may not decide: hop-by-hop and framing headers (proxyd's)
# and Host (which proxyd writes first, from the request); as Headers keys.
_NOT_FROM_PLUGINS = _keys(HOP_BY_HOP | FRAMING | frozenset([b"host"]))
_NOT_FROM_PLUGINS_RESPONSE = _keys(HOP_BY_HOP | FRAMING)
_CONNECTION = _headerKey(b"connection")
_UPGRADE = _headerKey(b"upgrade")

# Connection values that name no header a view could hold (the common ones).
_NAMES_NOTHING = HOP_BY_HOP | frozenset([b"close"])


def toHeaders(pairs):
    """Wire (name, value) pairs as the L{Headers} a plugin sees."""
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    return headers


def _viewDirect(wire, excluded, keep, host):
    """
    A fresh L{Headers} of the wire pairs whose names (as keys) are not in
    C{excluded} (C{keep} excepted), after C{Host: host} unless C{host} is
    None: one pass, filled straight into Twisted's dict (see above).
    """
    headers = Headers.__new__(Headers)  # Headers() without the call to its __init__
    raw = headers._rawHeaders = {}
    if host is not None:
        raw[b"Host"] = [host]
    canonical = _canonical
    connection = None
    for name, value in wire:
        key = canonical.get(name) or _canonicalName(name)
        if key in excluded and key != keep:
            if key == _CONNECTION and value.lower() not in _NAMES_NOTHING:
                if connection is None:
                    connection = []
                connection.append(value)
            continue
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    if connection is not None:
        _dropNamed(headers, connection, excluded, keep)
    return headers


def _viewPublic(wire, excluded, keep, host):
    """
    L{_viewDirect} through the public API of L{Headers}: the fallback, and
    the reference the start-up self-check compares it with.  The filtering
    loop is written out in both on purpose: shared through a helper, it
    cost the plugin path about 5% (bench/pluginloop.py 0.77-0.78 -> 0.71-0.73).
    """
    headers = Headers()
    if host is not None:
        headers.addRawHeader(b"Host", host)
    canonical = _canonical
    connection = None
    for name, value in wire:
        key = canonical.get(name) or _canonicalName(name)
        if key in excluded and key != keep:
            if key == _CONNECTION and value.lower() not in _NAMES_NOTHING:
                if connection is None:
                    connection = []
                connection.append(value)
            continue
        headers.addRawHeader(key, value)
    if connection is not None:
        _dropNamed(headers, connection, excluded, keep)
    return headers


def _dropNamed(headers, connection, excluded, keep):
    """
    Remove the headers the Connection values C{connection} name (hop-by-hop
    for this connection only), but not C{keep} nor C{excluded} ones, which
    were never added from the wire (the request's Host is proxyd's own).
    """
    named = connectionTokens([(b"connection", value) for value in connection])
    drop = [
        name for name, _ in headers.getAllRawHeaders()
        if name.lower() in named and name not in excluded and name != keep
    ]
    for name in drop:
        headers.removeHeader(name)


_SELF_CHECK = [
    (b"content-TYPE", b"a"), (b"X-Two", b"1"), (b"Connection", b"x-gone, keep-alive"), (b"x-two", b"2"),
    (b"Etag", b"e"), (b"X-Gone", b"g"), (b"Upgrade", b"u"), (b"connection", b"upgrade"), (b"te", b"t"),
]


def _viewsLikeTwisted():
    """Whether L{_viewDirect} builds exactly what L{_viewPublic} does, names and order alike."""
    try:
        for keep, host in ((None, None), (_UPGRADE, b"h")):
            fast = _viewDirect(_SELF_CHECK, _NOT_FROM_PLUGINS, keep, host)
            public = _viewPublic(_SELF_CHECK, _NOT_FROM_PLUGINS, keep, host)
            if type(fast._rawHeaders) is not dict or list(fast._rawHeaders.items()) != list(
                public.getAllRawHeaders()
            ):
                return False
        return fast.getRawHeaders(b"x-two") == [b"1", b"2"] and not fast.hasHeader(b"x-gone")
    except Exception:
        return False
    finally:
        _canonical.clear()


_view = _viewDirect if _viewsLikeTwisted() else _viewPublic


def requestHeaders(head, host):
    """
    The L{Headers} request hooks see, in one pass over the wire pairs:
    C{Host: host} first, then the end-to-end headers without framing ones;
    C{Upgrade} is kept on a GET that asks for one (a WebSocket handshake).
    """
    return _view(head.headers, _NOT_FROM_PLUGINS, _UPGRADE if head.method == b"GET" else None, host)


def responseHeaders(wire):
    """The L{Headers} response hooks see: end-to-end, no framing headers."""
    return _view(wire, _NOT_FROM_PLUGINS_RESPONSE, None, None)


def _asHeaders(headers):
    """What a plugin put in place of a L{Headers}, as one (its names spelt as Headers keys)."""
    copy = Headers()
    for name, values in headers.getAllRawHeaders():
        for value in values:
            copy.addRawHeader(name, value)
    return copy


def wirePairs(headers, keepUpgrade=False):
    """
    The L{Headers} a plugin left, as wire pairs without hop-by-hop,
    framing or Host headers (C{Upgrade} kept with C{keepUpgrade}).
    """
    if not isinstance(headers, Headers):
        headers = _asHeaders(headers)
    keep = _UPGRADE if keepUpgrade else None
    out = []
    for name, values in headers.getAllRawHeaders():
        if name in _NOT_FROM_PLUGINS and name != keep:
            continue
        for value in values:
            out.append((name, value))
    return out


def requestWirePairs(headers, method):
    """
    L{wirePairs} for a request, and whether it is a GET asking to upgrade
    (its C{Upgrade} is then kept), in one pass.
    """
    if not isinstance(headers, Headers):
        headers = _asHeaders(headers)
    out = []
    upgrading = False
    for name, values in headers.getAllRawHeaders():
        if name in _NOT_FROM_PLUGINS:
            if name != _UPGRADE or method != b"GET":
                continue
            upgrading = True
        for value in values:
            out.append((name, value))
    return out, upgrading
