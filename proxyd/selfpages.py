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
    body = text.encode("utf-8")
    phrase = b"OK" if status == 200 else b"Not Found"
    head = [
        b"HTTP/1.1 %d %s" % (status, phrase),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % (len(body),),
        b"Cache-Control: no-store",
    ]
    if not keepAlive:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body
