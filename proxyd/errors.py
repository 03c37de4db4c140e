# -*- test-case-name: tests.unit.test_errors -*-
"""
The errors proxyd answers with itself, and how they look on the wire: short
text/plain bodies that say what happened.  Code raises L{ProxyError}; the
channel renders it with L{errorResponse}.
"""

from http import HTTPStatus


class ProxyError(Exception):
    """
    A request proxyd answers itself.

    @ivar status: the HTTP status.
    @ivar reason: one line saying what happened, for the body and the log.
    """

    def __init__(self, status, reason):
        Exception.__init__(self, status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return "{} {}".format(self.status, self.reason)


def statusPhrase(status):
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Error"


def errorResponse(status, reason, close=True, extraHeaders=()):
    """The bytes of a complete text/plain error response."""
    phrase = statusPhrase(status)
    body = b"proxyd: %d %s: %s\n" % (status, phrase, reason.encode("utf-8", "replace"))
    lines = [
        b"HTTP/1.1 %d %s" % (status, phrase),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % (len(body),),
        b"Via: 1.1 proxyd",
    ]
    for name, value in extraHeaders:
        lines.append(name + b": " + value)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
