# -*- test-case-name: tests.unit.test_exchange -*-
"""
One proxied HTTP exchange: a request head from the client, an upstream
connection from the pool, the request body streamed up, the response
streamed down, then the connection back to the pool (or closed).

Bodies are never held: each chunk is written to the other side as it
arrives, and the writing side's transport pauses the reading side's
(registerProducer(..., streaming=True)) when its buffer is full.
"""

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from proxyd import h1
from proxyd.errors import ProxyError, statusPhrase
from proxyd.forwarded import replaceForwarding
from proxyd.headers import addVia, endToEnd
from proxyd.relay import Relay
from proxyd.tlsconfig import describeTLSFailure

IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


@implementer(IPushProducer)
class _Pauser:
    """A streaming producer that pauses one side of the channel."""

    def __init__(self, pause, resume):
        self.pauseProducing = pause
        self.resumeProducing = resume

    def stopProducing(self):
        pass


class HttpExchange:
    """
    Relays one request and its response.  The channel creates it from the
    request head, feeds it the request body events, and is told by
    C{channel.exchangeDone(exchange, closeClient)} when it is over.
    """

    _log = Logger()

    # Reverse mode sets these (proxyd.reverse): the client facts for the
    # X-Forwarded-*/Forwarded headers, the backend choice to fail over
    # with, and the URL the client asked for.
    forwarding = None
    backends = None
    publicURL = None

    def __init__(self, channel, head, host, port, path, hostHeader, tlsName=None):
        self.channel = channel
        self.clock = channel.clock
        self.head = head
        self.host = host
        self.port = port
        self.path = path
        self.hostHeader = hostHeader
        self.tlsName = tlsName
        self.key = (host, port) if tlsName is None else ("https", host, port, tlsName)
        self.upstream = None
        self.connecting = None
        self.retried = False
        self.requestDone = False
        self.requestBodySent = 0
        self.responseHead = None
        self.responseStarted = False
        self.done = False
        self.rechunk = False
        self.closeClient = not head.keepAlive
        self.bytesIn = 0
        self.bytesOut = 0
        self.status = None
        self.upgrading = False
        self.upstreamChunked = False
        self.relay = None
        self.method = head.method

    # Upstream connection

    def start(self):
        conn = self.channel.pool.take(self.key)
        if conn is not None:
            self._attach(conn)
        else:
            self._connect()

    def _connect(self):
        self.connecting = self.channel.pool.connect(self.key)
        self.connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, conn):
        self.connecting = None
        if self.backends is not None:
            self.backends.connected()
        if self.done:
            conn.transport.loseConnection()
            return
        self._attach(conn)

    def _connectFailed(self, failure):
        self.connecting = None
        if self.done:
            return
        if self.backends is not None and self._failOver(failure):
            return
        if failure.check(ProxyError):
            self._log.info(
                "{client} {target}: {status} {reason}",
                client=self.channel.client,
                target=self.channel._targetOf(self),
                status=failure.value.status,
                reason=failure.value.reason,
            )
            self.fail(failure.value.status, failure.value.reason)
        else:
            self._log.failure("Connecting to {host}:{port} failed", failure, host=self.host, port=self.port)
            self.fail(502, "cannot connect to upstream: {}".format(failure.getErrorMessage()))

    def _failOver(self, failure):
        """Reverse mode: try the next backend; False when none is left."""
        from proxyd.reverse import retarget

        reason = failure.value.reason if failure.check(ProxyError) else failure.getErrorMessage()
        backend = self.backends.failed(reason)
        if backend is None:
            return False
        retarget(self, backend)
        self._connect()
        return True

    def _attach(self, conn):
        self.upstream = conn
        self.channel.upstreamAddress = conn.peer
        data = self._requestHeadBytes()
        self.bytesIn += len(data)
        conn.begin(self, data, self.method == b"HEAD")
        self._sendBodyStart(conn)
        if not self.requestDone:
            self.channel.releaseRequest()

    def _requestHeadBytes(self):
        """The request head as the upstream gets it."""
        head = self.head
        upgrade = head.method == b"GET" and any(n.lower() == b"upgrade" for n, _ in head.headers)
        self.upgrading = upgrade
        headers = endToEnd(head.headers, keepUpgrade=upgrade, keepFraming=False)
        headers = [(n, v) for (n, v) in headers if n.lower() != b"host"]
        headers.insert(0, (b"Host", self.hostHeader))
        # proxyd states the body's framing itself, from what it parsed.
        if head.framing == h1.LENGTH:
            headers.append((b"Content-Length", b"%d" % (head.length,)))
        elif head.framing == h1.CHUNKED:
            headers.append((b"Transfer-Encoding", b"chunked"))
            self.upstreamChunked = True
        if self.forwarding is not None:
            headers = replaceForwarding(headers, *self.forwarding)
        addVia(headers, head.version)
        return h1.serializeHead(head.method + b" " + self.path + b" HTTP/1.1", headers)

    def _sendBodyStart(self, conn):
        """After the head: let the client's body flow up, with backpressure."""
        if self.head.framing != h1.NO_BODY and not self.requestDone:
            conn.transport.registerProducer(self.channel.bodyProducer, True)

    # Request body, from the channel

    def requestBody(self, data):
        if self.responseStarted and self.done:
            return
        self.requestBodySent += len(data)
        self.bytesIn += len(data)
        if self.upstreamChunked:
            self.upstream.transport.write(h1.chunk(data))
        else:
            self.upstream.transport.write(data)

    def requestEnd(self):
        self.requestDone = True
        if self.upstream is None or self.done:
            return
        if self.head.framing != h1.NO_BODY:
            if self.upstreamChunked:
                self.upstream.transport.write(h1.LAST_CHUNK)
            self.upstream.transport.unregisterProducer()

    # Response, from the upstream connection

    def upstreamEvent(self, kind, value):
        if kind == h1.BODY:
            self.bytesOut += len(value)
            if self.rechunk:
                self.channel.transport.write(h1.chunk(value))
            else:
                self.channel.transport.write(value)
        elif kind == h1.HEAD:
            self._responseHead(value)
        elif kind == h1.END:
            self._responseEnd()
        elif kind == h1.INFO:
            self._informational(value)
        elif kind == h1.UPGRADE:
            self._upgraded(value)
        elif kind == h1.ERROR:
            self._upstreamBroken(value.reason)

    def _informational(self, head):
        if self.head.version != b"1.1":
            return
        headers = addVia(endToEnd(head.headers))
        data = h1.serializeHead(b"HTTP/1.1 %d %s" % (head.status, head.reason or statusPhrase(head.status)), headers)
        self.bytesOut += len(data)
        self.channel.transport.write(data)

    def _responseHead(self, head):
        self.responseHead = head
        self.responseStarted = True
        self.status = head.status
        if head.status == 101:
            if not self.upgrading:
                self._upstreamBroken("upstream switched protocols without being asked")
                return
            headers = addVia(endToEnd(head.headers, keepUpgrade=True), head.version)
            data = h1.serializeHead(b"HTTP/1.1 101 %s" % (head.reason or statusPhrase(101),), headers)
            self.bytesOut += len(data)
            self.channel.transport.write(data)
            return
        framing = head.framing
        headers = endToEnd(head.headers, keepFraming=framing in (h1.NO_BODY, h1.LENGTH))
        self._sendHead(head.status, head.reason, headers, framing, head.version, framing != h1.NO_BODY)

    def _sendHead(self, status, reason, headers, framing, version, streaming):
        """
        Write a response head to the client.

        @param headers: end-to-end pairs, with Content-Length already in
            them for a LENGTH or NO_BODY framing.
        @param framing: how the body that follows arrives: CHUNKED and
            UNTIL_CLOSE bodies are re-chunked for HTTP/1.1 clients and
            close-delimited for HTTP/1.0 ones.
        @param streaming: whether the body is relayed from the upstream
            (whose transport then becomes the client's producer).
        """
        if framing in (h1.CHUNKED, h1.UNTIL_CLOSE):
            if self.head.version == b"1.1":
                self.rechunk = True
                headers.append((b"Transfer-Encoding", b"chunked"))
            else:
                self.closeClient = True
        if not self.requestDone or self.upgrading:
            # The origin answered before the body was all sent (or refused
            # an upgrade): the client connection cannot be reused safely.
            self.closeClient = True
        if self.channel.closing:
            self.closeClient = True
        if self.closeClient:
            headers.append((b"Connection", b"close"))
        elif self.head.version != b"1.1":
            headers.append((b"Connection", b"keep-alive"))
        addVia(headers, version)
        data = h1.serializeHead(b"HTTP/1.1 %d %s" % (status, reason or statusPhrase(status)), headers)
        self.bytesOut += len(data)
        transport = self.channel.transport
        transport.write(data)
        if streaming:
            transport.registerProducer(self.upstream.transport, True)

    def _responseEnd(self):
        if self.rechunk:
            self.channel.transport.write(h1.LAST_CHUNK)
        if self.responseHead.framing != h1.NO_BODY:
            self.channel.transport.unregisterProducer()
        self._releaseUpstream()
        self._finish()

    def _releaseUpstream(self):
        """The response is complete: pool the connection, or close it."""
        conn = self.upstream
        if self.responseHead.keepAlive and self.requestDone and conn.connected and not conn.reader.dirty:
            self.channel.pool.release(conn)
        else:
            conn.detach()
            conn.transport.loseConnection()
        self.upstream = None

    def _upgraded(self, rest):
        """101 Switching Protocols: the two connections become a byte relay."""
        conn = self.upstream
        conn.detach()
        self.upstream = None
        self.done = True
        relay = Relay(self.clock, self.channel, conn, self.channel.relayDone)
        conn.relay = relay
        self.channel.startRelay(relay, self)
        if rest:
            relay.fromUpstream(rest)

    def _upstreamBroken(self, reason):
        self._log.info("Bad response from upstream {host}:{port}: {reason}", host=self.host, port=self.port, reason=reason)
        conn = self.upstream
        if conn is not None:
            conn.detach()
            conn.transport.abortConnection()
            self.upstream = None
        if self.responseStarted:
            self._abortClient()
        else:
            self.fail(502, "bad response from upstream: {}".format(reason))

    def upstreamLost(self, reason, conn):
        """The upstream connection closed before the response ended."""
        if self.done or conn is not self.upstream:
            return
        conn.detach()
        self.upstream = None
        if self.responseStarted:
            self._log.info(
                "Upstream {host}:{port} closed mid-response; aborting the client connection",
                host=self.host,
                port=self.port,
            )
            self._abortClient()
            return
        if (
            conn.reused
            and not self.retried
            and conn.responseBytes == 0
            and self.requestBodySent == 0
            and self.head.method in IDEMPOTENT
        ):
            # A pooled connection the origin had closed: try once more.
            self.retried = True
            self._connect()
            return
        if self.tlsName is not None:
            tlsWhy = describeTLSFailure(reason, conn.transport, self.tlsName)
            if tlsWhy is not None:
                self._log.info("{why}", why=tlsWhy)
                self.fail(502, tlsWhy)
                return
        why = "upstream closed the connection" if reason.check(ConnectionDone) else reason.getErrorMessage()
        self.fail(502, "{} before responding ({}:{})".format(why, self.host, self.port))

    # Ending

    def fail(self, status, reason):
        """Answer the client with proxyd's own error, if it is not too late."""
        if self.done:
            return
        if self.responseStarted:
            self._abortClient()
            return
        self.status = status
        self.closeClient = True
        if self.upstream is not None:
            self.upstream.detach()
            self.upstream.transport.abortConnection()
            self.upstream = None
        self.channel.sendError(status, reason, self)

    def _abortClient(self):
        self.done = True
        self.closeClient = True
        self.channel.abortExchange(self)

    def _finish(self):
        self.done = True
        self.channel.exchangeDone(self, self.closeClient)

    def clientLost(self):
        """The client went away; give up the upstream side."""
        if self.done:
            return
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
        conn = self.upstream
        if conn is not None:
            conn.detach()
            conn.transport.abortConnection()
            self.upstream = None
