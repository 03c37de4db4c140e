# -*- test-case-name: tests.unit.test_channel -*-
"""
Request targets as a proxy reads them: C{host[:port]} authorities
(names, IPv4, [IPv6]), absolute http(s) URLs, CONNECT targets, and the
authority proxyd writes back into Host.  Every problem is a 400
L{ProxyError} saying what is wrong.
"""

from proxyd.errors import ProxyError

DEFAULT_PORTS = {b"http": 80, b"https": 443}


def splitAuthority(authority, defaultPort):
    """
    C{host[:port]} or C{[v6]:port} to (host str, port int).

    @raise ProxyError: 400 on anything else.
    """
    try:
        text = authority.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError(400, "bad host in request target")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ProxyError(400, "bad IPv6 address in request target")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ProxyError(400, "bad port in request target")
        port = rest[1:] if rest else ""
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise ProxyError(400, "bad IPv6 address in request target")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, ""
    if port == "":
        if defaultPort is None:
            raise ProxyError(400, "no port in request target")
        port = defaultPort
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise ProxyError(400, "bad port in request target")
    port = int(port)
    if not host or not all(c.isalnum() or c in "-._:" for c in host):
        raise ProxyError(400, "bad host in request target")
    return host.lower(), port


def splitURL(url, schemes=(b"http", b"https")):
    """
    An absolute URL to (scheme, host, port, origin-form path): the
    fragment dropped, an empty path made C{/}.

    @raise ProxyError: 400 for another scheme, user information, or a bad
        host or port.
    """
    scheme, sep, rest = url.partition(b"://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise ProxyError(400, "request target is not an absolute {} URL".format(
            " or ".join(s.decode() + "://" for s in schemes)))
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:].split(b"#", 1)[0]
    if b"@" in authority:
        raise ProxyError(400, "user information in the URL is not allowed")
    host, port = splitAuthority(authority, DEFAULT_PORTS[scheme])
    if not path.startswith(b"/"):
        path = b"/" + path
    return scheme, host, port, path


def formatAuthority(host, port, defaultPort):
    """C{host[:port]} for Host (IPv6 in brackets, the default port left out)."""
    if not isinstance(host, bytes):
        host = host.encode("ascii") if host.isascii() else host.encode("idna")
    name = host
    if b":" in name:
        name = b"[" + name + b"]"
    if port != defaultPort:
        name += b":%d" % (port,)
    return name


def parseAbsoluteURL(target):
    """
    Split an absolute-form http:// target into (host, port, origin-form path,
    Host header value).
    """
    if target[:8].lower() == b"https://":
        raise ProxyError(400, "https:// URLs are fetched through CONNECT, not as plain requests")
    scheme, host, port, path = splitURL(target, (b"http",))
    return host, port, path, formatAuthority(host, port, 80)


def parseConnectTarget(target):
    """C{host:port} (names, IPv4, [IPv6]) of a CONNECT request."""
    if b"/" in target or b"@" in target:
        raise ProxyError(400, "CONNECT target must be host:port")
    return splitAuthority(target, None)
