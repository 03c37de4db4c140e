# -*- test-case-name: tests.unit.test_forwarded -*-
"""
The headers a reverse proxy tells its backend the real client with:
C{X-Forwarded-For}, C{X-Forwarded-Proto}, C{X-Forwarded-Host} and
C{Forwarded} (RFC 7239).  proxyd is the edge, so whatever the client sent
in them is a claim nobody vouches for: it is dropped and replaced, never
appended to.
"""

import ipaddress

from proxyd.errors import ProxyError
from proxyd.urls import splitAuthority

FORWARDING = frozenset(
    [
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        # Also trusted by common frameworks for the scheme, host or client
        # (Rack, Spring, werkzeug, ASP.NET): a client must not set them either.
        b"x-forwarded-server",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-protocol",
        b"x-url-scheme",
        b"front-end-https",
        b"x-client-ip",
        b"true-client-ip",
    ]
)

_PROTOS = ("http", "https")
# RFC 7230 tchar: what may stand in a Forwarded value without quotes.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _isForwarding(name):
    """
    Whether a header name is one of L{FORWARDING}, in any case and with
    C{_} for C{-}: CGI and WSGI servers file C{X_Forwarded_For} under the
    same variable as C{X-Forwarded-For}.
    """
    return name.strip().lower().replace(b"_", b"-") in FORWARDING


def _clientAddress(client):
    """The client as an IP literal (str), or None if unknown or not an IP."""
    if client is None:
        return None
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    return str(getattr(address, "ipv4_mapped", None) or address)


def _safeHost(host):
    """
    The client's Host, stripped of surrounding whitespace, if it is a
    well-formed C{host[:port]}; else None, so that nothing the client put in
    it (CR, LF, NUL, quotes, commas, spaces) reaches a header of ours.
    """
    if host is None:
        return None
    host = host.strip(b" \t")
    try:
        splitAuthority(host, 0)
    except ProxyError:
        return None
    return host


def quoteValue(value):
    """
    A Forwarded parameter value (bytes): as is when a token, else an RFC
    7230 quoted-string with C{"} and C{\\} escaped.

    @raise ValueError: for a control character or non-ASCII byte, which no
        quoted-string proxyd writes may hold.
    """
    if value and all(c in _TOKEN for c in value):
        return value
    if any(c < 0x20 or c > 0x7E for c in value):
        raise ValueError("control or non-ASCII byte in a Forwarded value")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwardingHeaders(client, proto, host):
    """
    The forwarding headers for one request.

    @param client: the client's IP address (str), or None when unknown (a
        unix socket client).
    @param proto: C{"http"} or C{"https"}, the scheme the client used.
    @param host: the client's Host value (bytes) or None; left out of
        C{X-Forwarded-Host} and C{host=} when it is not a clean authority.
    @return: a list of (name, value) pairs.
    """
    if proto not in _PROTOS:
        raise ValueError(f"proto must be http or https, not {proto!r}")
    address = _clientAddress(client)
    host = _safeHost(host)
    protoBytes = proto.encode("ascii")
    if address is None:
        forAddress, forNode = b"unknown", b"unknown"
    else:
        forAddress = address.encode("ascii")
        forNode = b"[" + forAddress + b"]" if ":" in address else forAddress
    headers = [(b"X-Forwarded-For", forAddress), (b"X-Forwarded-Proto", protoBytes)]
    element = [b"for=" + quoteValue(forNode), b"proto=" + protoBytes]
    if host is not None:
        headers.append((b"X-Forwarded-Host", host))
        element.append(b"host=" + quoteValue(host))
    headers.append((b"Forwarded", b";".join(element)))
    return headers


def replaceForwarding(headers, client, proto, host):
    """
    C{headers} (name, value) pairs without any forwarding header the
    client sent, followed by proxyd's own from L{forwardingHeaders}.
    """
    kept = [(name, value) for name, value in headers if not _isForwarding(name)]
    return kept + forwardingHeaders(client, proto, host)
