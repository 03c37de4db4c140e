# -*- test-case-name: tests.unit.test_channel -*-
"""
Requests addressed to proxyd itself (origin-form on the proxy port):
C{/} says what it is, C{/healthz} answers C{ok}, anything else is 404.
"""

from proxyd import __version__

_MODES = {
    "forward": "a forward proxy (plain http:// requests and CONNECT tunnels)",
    "mitm": "an intercepting proxy",
    "reverse": "a TLS-terminating reverse proxy",
}


def selfPage(path, mode):
    """(status, text body) for a request to proxyd itself."""
    path = path.split(b"?", 1)[0]
    if path == b"/":
        return 200, (
            "proxyd {} is running in {} mode: {}.\n"
            "Use it as an HTTP proxy (for example: curl -x http://HOST:PORT http://example.com/).\n"
            "/healthz answers ok.\n"
        ).format(__version__, mode, _MODES.get(mode, mode))
    if path == b"/healthz":
        return 200, "ok\n"
    return 404, "proxyd: 404 Not Found: this is a proxy; send absolute-form requests or CONNECT\n"


def renderPage(status, text, keepAlive):
    """A text/plain page of proxyd's own."""
    return render(
        status, text.encode("utf-8"), keepAlive,
        ((b"Content-Type", b"text/plain; charset=utf-8"), (b"Cache-Control", b"no-store")),
    )


def render(status, body, keepAlive, headers):
    """The bytes of a whole response of proxyd's own: C{headers}, then the framing."""
    phrase = b"OK" if status == 200 else b"Not Found"
    lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"Content-Length: %d" % (len(body),))
    if not keepAlive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def respond(target, mode, keepAlive, caPEM=None):
    """
    A request to proxyd itself: C{(status, bytes of the whole response,
    body length)}.  In mitm mode C{/ca.pem} downloads the CA certificate.
    """
    if caPEM is not None and mode == "mitm" and target.split(b"?", 1)[0] == b"/ca.pem":
        headers = (
            (b"Content-Type", b"application/x-x509-ca-cert"),
            (b"Content-Disposition", b'attachment; filename="proxyd-ca.pem"'),
        )
        return 200, render(200, caPEM, keepAlive, headers), len(caPEM)
    status, text = selfPage(target, mode)
    return status, renderPage(status, text, keepAlive), 0
