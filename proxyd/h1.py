# -*- test-case-name: tests.unit.test_h1 -*-
"""
Sans-I/O HTTP/1.1 for a proxy: message readers over httptools (llhttp).  No
Twisted imports.

llhttp is strict already (it refuses Content-Length with Transfer-Encoding,
duplicate Content-Lengths, obs-fold, bare CR, NUL, bad chunk sizes); proxyd
adds its own checks on top (duplicate Host, Transfer-Encoding on HTTP/1.0,
head size) and decides body framing itself, because a proxy must know the
framing to re-frame the message for the other side.  Those decisions, the
head objects and the bytes proxyd writes are in L{proxyd.h1heads}; this
module re-exports them, so callers use C{h1.<name>} for both halves.

Readers never call back into the caller from inside the C parser: parser
callbacks append events to a queue, and the queue is dispatched after
``feed_data`` returns.  That lets the caller pause (pipelined requests wait
their turn) and lets its exceptions propagate normally.
"""

import httptools

# The message model lives in h1heads; it is re-exported so that callers
# need only "from proxyd import h1".
from proxyd.h1heads import (
    BODY, CHUNKED, CRLF, END, ERROR, HEAD, INFO, LAST_CHUNK, LENGTH, NO_BODY, RAW,
    UNTIL_CLOSE, UPGRADE, ProtocolError, RequestHead, ResponseHead,
    checkRequestHead, chunk, frameResponse, serializeHead,
)

__all__ = [
    "RequestReader", "ResponseReader",
    # re-exported from proxyd.h1heads
    "HEAD", "BODY", "END", "UPGRADE", "RAW", "ERROR", "INFO",
    "NO_BODY", "LENGTH", "CHUNKED", "UNTIL_CLOSE", "CRLF", "LAST_CHUNK",
    "ProtocolError", "RequestHead", "ResponseHead",
    "checkRequestHead", "frameResponse", "serializeHead", "chunk",
]


class _StopMessage(Exception):
    """
    Raised inside an llhttp callback to stop parsing: C{args} is (status,
    reason) for an error, or (None, None) to end a bodyless response.
    """


class _Reader:
    """
    Common machinery: the event queue, pausing, and the head-size bound.

    The bound is counted per message from what llhttp reports (request
    line, status line, each header), so pipelined messages are each judged
    on their own.  Memory for a line that never ends is bounded too: bytes
    fed while a head makes no progress are counted as a stall, and a stall
    past the bound ends the message.
    """

    def __init__(self, maxHeadSize):
        self.maxHeadSize = maxHeadSize
        self.events = []
        self.paused = False
        self.queuedBytes = 0
        self.inHead = True
        self.headBytes = 0
        self.stall = 0
        self.done = False  # after UPGRADE or ERROR the parser is finished
        self.failed = False
        self.upgraded = False
        self._headers = []

    def pause(self):
        """Stop dispatching; events queue up until L{resume}."""
        self.paused = True

    def resume(self):
        self.paused = False
        self.dispatch()

    def feed(self, data):
        """Parse C{data}; dispatch the events unless paused."""
        if self.failed:
            return
        if self.done:
            self._queue(RAW, data)
        else:
            if self.inHead:
                self.stall += len(data)
            if self._parse(data) and self.inHead and self.stall > self.maxHeadSize:
                self._tooLarge()
        if not self.paused:
            self.dispatch()

    def _parse(self, data):
        """Feed llhttp; return False once the parser has ended."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
            return False
        except httptools.HttpParserCallbackError as e:
            ctx = e.__context__
            if isinstance(ctx, _StopMessage):
                status, reason = ctx.args
                if status is None:
                    self._bodylessEnd(data)
                else:
                    self._fail(status, reason)
            else:
                self._fail(self._badStatus, "malformed message: {}".format(ctx or e))
            return False
        except httptools.HttpParserError as e:
            self._fail(self._badStatus, self._malformed.format(e))
            return False
        return True

    def _upgraded(self, rest):
        self.done = True
        self.upgraded = True
        self._queue(UPGRADE, rest)

    def _bodylessEnd(self, data):
        raise NotImplementedError()

    def _tooLarge(self):
        self._fail(self._tooLargeStatus, self._tooLargeReason.format(self.maxHeadSize))

    def _countHead(self, n):
        """Account C{n} bytes of head; raise to stop an oversized one."""
        self.stall = max(self.stall - n, 0)
        self.headBytes += n
        if self.headBytes > self.maxHeadSize:
            raise _StopMessage(self._tooLargeStatus, self._tooLargeReason.format(self.maxHeadSize))

    def _fail(self, status, reason):
        self.done = True
        self.failed = True
        self._queue(ERROR, ProtocolError(status, reason))

    def _queue(self, kind, value):
        if kind == BODY or kind == RAW:
            self.queuedBytes += len(value)
        self.events.append((kind, value))

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
        self.inHead = True
        self.headBytes = 0
        self._headers = []

    def on_header(self, name, value):
        if self.inHead:
            # _countHead, inlined: this runs for every header of every message.
            n = len(name) + len(value) + 4
            stall = self.stall - n
            self.stall = stall if stall > 0 else 0
            self.headBytes += n
            if self.headBytes > self.maxHeadSize:
                raise _StopMessage(self._tooLargeStatus, self._tooLargeReason.format(self.maxHeadSize))
            self._headers.append((name, value))
        # else: a trailer field; trailers are dropped (they are optional).

    def on_body(self, body):
        self._queue(BODY, body)

    def on_message_complete(self):
        self.inHead = True
        self.headBytes = 0
        self.stall = 0
        self._queue(END, None)


class RequestReader(_Reader):
    """
    Reads requests from a client.  C{sink.messageEvent(kind, value)} receives
    HEAD, BODY, END, UPGRADE (CONNECT or Upgrade request: the bytes after the
    head), RAW (bytes after that) and ERROR events.
    """

    _badStatus = 400
    _malformed = "malformed request: {}"
    _tooLargeStatus = 431
    _tooLargeReason = "request head larger than {} bytes"

    def __init__(self, sink, maxHeadSize=65536):
        _Reader.__init__(self, maxHeadSize)
        self.sink = sink
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""

    def on_message_begin(self):
        _Reader.on_message_begin(self)
        self._url = b""

    def on_url(self, url):
        # "METHOD url HTTP/1.1\r\n": the method is added at the end of head.
        self._countHead(len(url) + (12 if not self._url else 0))
        self._url += url

    def on_headers_complete(self):
        parser = self.parser
        self._countHead(len(parser.get_method()) + 2)
        self.inHead = False
        self.stall = 0
        head = RequestHead(parser.get_method(), self._url, parser.get_http_version().encode("ascii"), self._headers)
        error = checkRequestHead(head)
        if error is not None:
            raise _StopMessage(400, error)
        self._queue(HEAD, head)


class ResponseReader(_Reader):
    """
    Reads the responses of one upstream connection, one exchange at a time:
    call L{expect} before each request is sent.  Emits INFO (1xx), HEAD, BODY,
    END, UPGRADE (101) and ERROR; call L{connectionLost} at EOF, which ends a
    close-delimited body or reports truncation.

    @ivar dirty: bytes followed a bodyless response in the same read, so the
        connection is out of step and must not be reused.
    """

    _badStatus = 502
    _malformed = "bad response from upstream: {}"
    _tooLargeStatus = 502
    _tooLargeReason = "upstream response head larger than {} bytes"

    def __init__(self, sink, maxHeadSize=65536):
        _Reader.__init__(self, maxHeadSize)
        self.sink = sink
        self.parser = None
        self.bodyless = False
        self.framing = NO_BODY
        self.inMessage = False
        self.awaiting = False
        self.dirty = False
        self._info = False

    def expect(self, bodyless):
        """Get ready for the response to a request; C{bodyless} for HEAD."""
        self.parser = httptools.HttpResponseParser(self)
        self.bodyless = bodyless
        self.inHead = True
        self.headBytes = 0
        self.stall = 0
        self.done = False
        self.failed = False
        self.inMessage = False
        self.awaiting = True
        self.dirty = False
        self._info = False

    def feed(self, data):
        if not self.awaiting and not self.failed and not self.upgraded:
            self._fail(502, "upstream sent more than its response" if self.parser else "upstream sent data before any request")
            if not self.paused:
                self.dispatch()
            return
        _Reader.feed(self, data)

    def on_message_begin(self):
        if not self.awaiting:
            raise _StopMessage(502, "upstream sent more than its response")
        _Reader.on_message_begin(self)
        self.inMessage = True
        self._reason = b""

    def on_status(self, reason):
        # "HTTP/1.1 200 reason\r\n"
        self._countHead(len(reason) + (15 if not self._reason else 0))
        self._reason += reason

    def on_headers_complete(self):
        self._countHead(2 if self._reason else 17)
        self.inHead = False
        self.stall = 0
        parser = self.parser
        head = ResponseHead(parser.get_status_code(), self._reason, parser.get_http_version().encode("ascii"), self._headers)
        status = head.status
        if 100 <= status < 200:
            # llhttp ends a 1xx message by itself; it is not the final
            # answer, except 101, which ends with the UPGRADE event.
            self._info = True
            if status == 101:
                self._queue(HEAD, head)
            else:
                self.inMessage = False
                self._queue(INFO, head)
            return
        error = frameResponse(head, self.bodyless)
        if error is not None:
            raise _StopMessage(502, error)
        self.framing = head.framing
        self._queue(HEAD, head)
        if self.bodyless:
            # llhttp does not know the request was HEAD: stop it here.
            raise _StopMessage(None, None)

    def on_message_complete(self):
        if self._info:
            self._info = False
            self.inHead = True
            self.headBytes = 0
            self.stall = 0
            return
        self._ended()

    def _ended(self):
        self.inMessage = False
        self.awaiting = False
        self.done = True
        self._queue(END, None)

    def _upgraded(self, rest):
        self.inMessage = False
        self.awaiting = False
        _Reader._upgraded(self, rest)

    def _bodylessEnd(self, data):
        self._ended()
        end = data.rfind(b"\r\n\r\n")
        if end >= 0 and end + 4 != len(data):
            self.dirty = True
            self._fail(502, "upstream sent a body in answer to HEAD")

    def connectionLost(self):
        """
        The upstream closed.  A close-delimited body ends here; a response
        in progress, or one not yet begun, was cut short.

        @return: True if the close ended the message cleanly (or no
            response was expected).
        """
        if self.failed:
            return False
        if self.inMessage and not self.inHead and self.framing == UNTIL_CLOSE:
            self._ended()
            if not self.paused:
                self.dispatch()
            return True
        return not self.awaiting
