# -*- test-case-name: tests.unit.test_h1 -*-
"""
The HTTP/1.1 message model that proxyd reads and writes: head objects, event
and body-framing constants, the framing decisions for requests and responses,
and the bytes proxyd writes (heads, chunks).  No parsing and no Twisted
imports: the readers in L{proxyd.h1} fill these in, and the exchanges use
them to re-frame a message for the other side.

Framing is decided here rather than left to llhttp because a proxy must know
it to re-frame the message, and the smuggling checks (duplicate Host,
Transfer-Encoding on HTTP/1.0, Content-Length with Transfer-Encoding) are
pure decisions about a head.
"""

from proxyd.headers import connectionTokens

# Events, in the order a reader emits them.
HEAD = 0  # (HEAD, RequestHead | ResponseHead)
BODY = 1  # (BODY, bytes)
END = 2  # (END, None)
UPGRADE = 3  # (UPGRADE, bytes after the head)  CONNECT or 101
RAW = 4  # (RAW, bytes)  bytes that arrived after an UPGRADE
ERROR = 5  # (ERROR, ProtocolError)
INFO = 6  # (INFO, ResponseHead)  a 1xx other than 101

# Body framings.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class ProtocolError(Exception):
    """
    The peer sent something that is not acceptable HTTP/1.1.

    @ivar status: the status proxyd answers with (400, 431, 502).
    @ivar reason: one line for the text/plain body and the log.
    """

    def __init__(self, status, reason):
        Exception.__init__(self, status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return self.reason


class RequestHead:
    """A parsed request head; headers are (name, value) pairs in wire order."""

    __slots__ = ("method", "target", "version", "headers", "framing", "length", "keepAlive", "expectContinue")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.framing = NO_BODY
        self.length = 0
        self.keepAlive = True
        self.expectContinue = False


class ResponseHead:
    """A parsed response head."""

    __slots__ = ("status", "reason", "version", "headers", "framing", "length", "keepAlive")

    def __init__(self, status, reason, version, headers):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.framing = NO_BODY
        self.length = 0
        self.keepAlive = True


def _keepAlive(version, tokens):
    if version == b"1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


def checkRequestHead(head):
    """
    proxyd's own framing rules on top of llhttp's.  Sets C{head.framing},
    C{head.length}, C{head.keepAlive}, C{head.expectContinue}.

    @return: None if acceptable, else the reason for a 400.
    """
    te = None
    cl = None
    hosts = 0
    expect = False
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"content-length":
            if cl is not None:
                return "more than one Content-Length"
            if not value.isdigit():
                return "bad Content-Length"
            cl = int(value)
        elif lname == b"transfer-encoding":
            if te is not None:
                return "more than one Transfer-Encoding"
            te = value.strip().lower()
        elif lname == b"host":
            hosts += 1
        elif lname == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if hosts > 1:
        return "more than one Host"
    if te is not None:
        if cl is not None:
            return "both Content-Length and Transfer-Encoding"
        if head.version != b"1.1":
            return "Transfer-Encoding in an HTTP/1.0 request"
        if te != b"chunked":
            return "unsupported Transfer-Encoding"
        head.framing = CHUNKED
    elif cl:
        head.framing = LENGTH
        head.length = cl
    tokens = connectionTokens(head.headers)
    if head.framing != NO_BODY and b"upgrade" in tokens and head.method != b"CONNECT":
        return "an Upgrade request must not have a body"
    head.keepAlive = _keepAlive(head.version, tokens)
    head.expectContinue = expect and head.version == b"1.1"
    return None


def frameResponse(head, bodyless):
    """
    Decide the framing of a final response (RFC 9112 section 6.3).

    @return: None if acceptable, else the reason for a 502.
    """
    te = None
    cl = None
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"content-length":
            if cl is not None and int(value) != cl:
                return "upstream sent conflicting Content-Length headers"
            cl = int(value)
        elif lname == b"transfer-encoding":
            te = value if te is None else te + b"," + value
    head.keepAlive = _keepAlive(head.version, connectionTokens(head.headers))
    status = head.status
    if bodyless or status == 204 or status == 304:
        head.framing = NO_BODY
        return None
    if te is not None:
        if te.split(b",")[-1].strip().lower() == b"chunked":
            head.framing = CHUNKED
        else:
            head.framing = UNTIL_CLOSE
            head.keepAlive = False
    elif cl is not None:
        head.framing = LENGTH if cl else NO_BODY
        head.length = cl
    else:
        head.framing = UNTIL_CLOSE
        head.keepAlive = False
    return None


def serializeHead(startLine, headers):
    """A head's bytes from its start line and (name, value) pairs."""
    parts = [startLine]
    for name, value in headers:
        parts.append(name + b": " + value)
    parts.append(b"")
    parts.append(b"")
    return CRLF.join(parts)


def chunk(data):
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)
