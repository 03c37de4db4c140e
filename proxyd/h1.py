# -*- test-case-name: tests.unit.test_h1 -*-
"""
Sans-I/O HTTP/1.1 for a proxy: message readers over httptools (llhttp) and
head serialisation.  No Twisted imports.

llhttp is strict already (it refuses Content-Length with Transfer-Encoding,
duplicate Content-Lengths, obs-fold, bare CR, NUL, bad chunk sizes); proxyd
adds its own checks on top (duplicate Host, Transfer-Encoding on HTTP/1.0,
head size) and decides body framing itself, because a proxy must know the
framing to re-frame the message for the other side.

Readers never call back into the caller from inside the C parser: parser
callbacks append events to a queue, and the queue is dispatched after
``feed_data`` returns.  That lets the caller pause (pipelined requests wait
their turn) and lets its exceptions propagate normally.
"""

import httptools

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


def _connectionTokens(headers):
    tokens = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return tokens


def _keepAlive(version, tokens):
    if version == b"1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


class _Reader:
    """
    Common machinery: the event queue, pausing, and the head-size bound.

    The head-size bound is enforced on raw bytes before llhttp sees them, so a
    head that never ends cannot grow memory: while a head is being read, at
    most C{maxHeadSize} bytes are fed before the head must be complete.
    """

    def __init__(self, maxHeadSize):
        self.maxHeadSize = maxHeadSize
        self.events = []
        self.paused = False
        self.queuedBytes = 0
        self.inHead = True
        self.headBytes = 0
        self.done = False  # after UPGRADE or ERROR the parser is finished
        self._headers = []
        self._url = b""

    def pause(self):
        """Stop dispatching; events queue up until L{resume}."""
        self.paused = True

    def feed(self, data):
        """Parse C{data}; dispatch the events unless paused."""
        if self.done:
            if self.events and self.events[-1][0] == ERROR:
                return
            self._queue(RAW, data)
        else:
            self._feedParser(data)
        if not self.paused:
            self.dispatch()

    def _feedParser(self, data):
        while data:
            if self.inHead:
                room = self.maxHeadSize - self.headBytes
                if len(data) > room:
                    part, data = data[:room], data[room:]
                    self.headBytes += len(part)
                    if not self._parse(part):
                        return
                    if self.inHead:
                        self._tooLarge()
                        return
                    continue
                self.headBytes += len(data)
            self._parse(data)
            return

    def _parse(self, data):
        """Feed llhttp; return False once the message or the parser ended."""
        raise NotImplementedError()

    def _tooLarge(self):
        raise NotImplementedError()

    def _fail(self, status, reason):
        self.done = True
        self._queue(ERROR, ProtocolError(status, reason))

    def _queue(self, kind, value):
        if kind == BODY or kind == RAW:
            self.queuedBytes += len(value)
        self.events.append((kind, value))

    def resume(self):
        self.paused = False
        self.dispatch()

    def dispatch(self):
        """Hand queued events to the sink until it pauses us."""
        events = self.events
        while events and not self.paused:
            kind, value = events.pop(0)
            if kind == BODY or kind == RAW:
                self.queuedBytes -= len(value)
            self.sink.messageEvent(kind, value)

    # llhttp callbacks shared by both directions

    def on_message_begin(self):
        # headBytes is not reset here: it counts raw bytes since the end of
        # the previous message, so a head split over reads stays bounded.
        self.inHead = True
        self._headers = []
        self._url = b""

    def on_header(self, name, value):
        if self.inHead:
            self._headers.append((name, value))
        # else: a trailer field; trailers are dropped (they are optional).

    def on_body(self, body):
        self._queue(BODY, body)

    def on_message_complete(self):
        self.inHead = True
        self.headBytes = 0
        self._queue(END, None)


class _StopMessage(Exception):
    """Raised inside a callback to stop llhttp at the end of a head."""


class RequestReader(_Reader):
    """
    Reads requests from a client.  C{sink.messageEvent(kind, value)} receives
    HEAD, BODY, END, UPGRADE (CONNECT or Upgrade request: the bytes after the
    head), RAW (bytes after that) and ERROR events.
    """

    _badStatus = 400

    def __init__(self, sink, maxHeadSize=65536):
        _Reader.__init__(self, maxHeadSize)
        self.sink = sink
        self.parser = httptools.HttpRequestParser(self)

    def _tooLarge(self):
        self._fail(431, "request head larger than {} bytes".format(self.maxHeadSize))

    def on_url(self, url):
        self._url += url

    def on_headers_complete(self):
        self.inHead = False
        parser = self.parser
        headers = self._headers
        head = RequestHead(parser.get_method(), self._url, parser.get_http_version().encode("ascii"), headers)
        error = checkRequestHead(head)
        if error is not None:
            raise _StopMessage(error)
        self._queue(HEAD, head)

    def _parse(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.done = True
            self._queue(UPGRADE, data[e.args[0]:])
            return False
        except httptools.HttpParserCallbackError as e:
            reason = e.__context__.args[0] if isinstance(e.__context__, _StopMessage) else str(e.__context__ or e)
            self._fail(400, reason)
            return False
        except httptools.HttpParserError as e:
            self._fail(400, "malformed request: {}".format(e))
            return False
        return True


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
    head.keepAlive = _keepAlive(head.version, _connectionTokens(head.headers))
    head.expectContinue = expect and head.version == b"1.1"
    return None


class ResponseReader(_Reader):
    """
    Reads the responses of one upstream connection, one exchange at a time:
    call L{expect} before each request is sent.  Emits INFO (1xx), HEAD, BODY,
    END, UPGRADE (101) and ERROR; call L{connectionLost} at EOF, which ends a
    close-delimited body or reports truncation.
    """

    _badStatus = 502

    def __init__(self, sink, maxHeadSize=65536):
        _Reader.__init__(self, maxHeadSize)
        self.sink = sink
        self.parser = None
        self.bodyless = False
        self.framing = NO_BODY
        self.inMessage = False

    def expect(self, bodyless):
        """Get ready for the response to a request; C{bodyless} for HEAD."""
        self.parser = httptools.HttpResponseParser(self)
        self.bodyless = bodyless
        self.inHead = True
        self.headBytes = 0
        self.done = False
        self.inMessage = False

    def feed(self, data):
        if self.parser is None:
            self._fail(502, "upstream sent data before any request")
            if not self.paused:
                self.dispatch()
            return
        _Reader.feed(self, data)

    def _tooLarge(self):
        self._fail(502, "upstream response head larger than {} bytes".format(self.maxHeadSize))

    def on_message_begin(self):
        _Reader.on_message_begin(self)
        self.inMessage = True
        self._reason = b""

    def on_status(self, reason):
        self._reason += reason

    def on_headers_complete(self):
        self.inHead = False
        parser = self.parser
        head = ResponseHead(parser.get_status_code(), self._reason, parser.get_http_version().encode("ascii"), self._headers)
        status = head.status
        if 100 <= status < 200:
            if status == 101:
                # llhttp completes the message and then raises the upgrade;
                # the UPGRADE event, not END, ends this exchange.
                self._info = True
                self._queue(HEAD, head)
                return
            # llhttp ends a 1xx message by itself; it is not the final answer.
            self.inMessage = False
            self._queue(INFO, head)
            self._info = True
            return
        self._info = False
        error = frameResponse(head, self.bodyless)
        if error is not None:
            raise _StopMessage(error)
        self.framing = head.framing
        self._queue(HEAD, head)
        if self.bodyless:
            # llhttp does not know the request was HEAD: stop it here.
            raise _StopMessage(None)

    def on_message_complete(self):
        if getattr(self, "_info", False):
            self._info = False
            return
        self.inMessage = False
        self._queue(END, None)
        self.parser = None  # one response per expect()
        self.done = True

    def _parse(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.done = True
            self.inMessage = False
            self._queue(UPGRADE, data[e.args[0]:])
            return False
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, _StopMessage) and ctx.args[0] is None:
                self.inMessage = False
                self._queue(END, None)
                self.parser = None
                self.done = True
                return False
            reason = ctx.args[0] if isinstance(ctx, _StopMessage) else str(ctx or e)
            self._fail(502, reason)
            return False
        except httptools.HttpParserError as e:
            self._fail(502, "bad response from upstream: {}".format(e))
            return False
        except TypeError:
            # parser is None: data after the end of the message
            self._fail(502, "upstream sent more than its response")
            return False
        return True

    def _feedParser(self, data):
        if self.parser is None:
            if data:
                self._fail(502, "upstream sent more than its response")
            return
        _Reader._feedParser(self, data)

    def connectionLost(self):
        """
        The upstream closed.  A close-delimited body ends here; any other
        message in progress was truncated.

        @return: True if the close ended the message cleanly.
        """
        if not self.inMessage:
            return not self.inMessage
        if not self.inHead and self.framing == UNTIL_CLOSE:
            self.inMessage = False
            self.done = True
            self._queue(END, None)
            if not self.paused:
                self.dispatch()
            return True
        return False


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
    head.keepAlive = _keepAlive(head.version, _connectionTokens(head.headers))
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
