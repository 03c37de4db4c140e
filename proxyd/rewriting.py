# -*- test-case-name: tests.unit.test_rewriting -*-
"""
An L{HttpExchange} that runs the plugins: the one seam forward, mitm and
reverse channels all use when a --plugin rewrites HTTP.

Heads are shown to the request and response hooks while the other side
waits (the client's body stays queued in its reader, the upstream's
reader is paused).  Bodies stream by default; they are held whole only
for plugins that asked (READ_BODY), and only up to --max-body-buffer.
Whatever body is finally sent, proxyd frames it itself (the rules are
L{proxyd.reframing}'s).
"""

from twisted.logger import Logger

from proxyd import h1
from proxyd.exchange import HttpExchange
from proxyd.urls import DEFAULT_PORTS, formatAuthority, splitURL
from proxyd.errors import ProxyError, statusPhrase
from proxyd.headers import requestHeaders, responseHeaders, wirePairs
from proxyd.message import Flow, Request, Response
from proxyd.hooks import isDeferred
from proxyd.pipeline import NOTHING, PluginError
from proxyd.reframing import streamedResponseFraming, upstreamRequestHead, wholeResponseFraming

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class PluginExchange(HttpExchange):
    """
    One exchange through the plugin pipeline (C{channel.factory.pipeline}).

    The usual exchange, whose hooks answer at once and want no body, takes
    a short path: request hooks, then L{HttpExchange} on to the upstream;
    response hooks, then the head and a body relayed by L{HttpExchange} as
    is.  Only an exchange whose plugins want a body (L{_takeRequestBody},
    L{_takeResponseBody}) or wait on a Deferred goes through the rest.
    """

    _log = Logger()

    # Per-exchange state, at its class defaults until an exchange needs it.
    # An instance sets only what it uses: besides the cost of each store,
    # CPython shares one key table among a class's instances for up to 29
    # attributes, and HttpExchange and the channel already set 27 on the usual path
    # (tests/unit/test_rewriting.py's CommonPathTests keeps the count).
    flow = None
    waiting = None  # the pipeline Deferred in flight
    requestPlan = None
    requestFilters = None
    requestBuffer = None
    pendingBody = None  # buffered chunks to send after the head
    wholeBody = None
    responsePlan = None
    responseFilters = None
    responseBuffer = None
    bufferSize = 0
    promisedLength = None  # Content-Length sent for a filtered body
    sentLength = 0
    lostWhileHeld = None  # (reason, conn): the upstream closed during response hooks
    upstreamHeld = False
    pipeline = None  # the factory's as start() found it: a reload mid-exchange does not change it

    # Request head

    def start(self):
        head = self.head
        channel = self.channel
        self.pipeline = channel.factory.pipeline
        if self.publicURL is not None:
            url = self.publicURL  # reverse mode: the URL the client asked for
        elif self.tlsName is not None or channel.origin is not None:
            scheme, default = (b"https", 443) if self.tlsName is not None else (b"http", 80)
            url = scheme + b"://" + formatAuthority(self.tlsName or self.host, self.port, default) + self.path
        else:
            url = b"http://" + self.hostHeader + self.path
        self.flow = flow = Flow.new(
            Request.new(head.method, url, requestHeaders(head, self.hostHeader), head.version),
            channel.config.mode,
            channel.client,
            channel.startTime,
        )
        # _step(self._requestPlanned, ...), unrolled for the usual answer.
        try:
            plan = self.pipeline.requestHead(flow)
        except PluginError as e:
            self._pluginError(e)
            return
        if plan is NOTHING:
            if not self.done:
                self._route(url)  # no hook wants the body or answered: straight on
        else:
            self.originalURL = url
            self._then(plan, self._requestPlanned)

    def _step(self, then, run, *args, onWait=None):
        """
        C{run(*args)} (a pipeline round), then C{then(result)}: at once if
        every hook answered at once, else (after C{onWait()}) when its
        Deferred fires.
        """
        try:
            result = run(*args)
        except PluginError as e:
            self._pluginError(e)
            return
        self._then(result, then, onWait)

    def _then(self, result, then, onWait=None):
        """C{then(result)}: now, or (after C{onWait()}) once the Deferred C{result} fires."""
        if isDeferred(result):
            if onWait is not None:
                onWait()
            self.waiting = result
            result.addCallbacks(self._resumed, self._pluginFailed, (then,))
        elif not self.done:
            try:
                then(result)
            except PluginError as e:
                self._pluginError(e)

    def _resumed(self, result, then):
        self.waiting = None
        if self.done:
            return
        try:
            then(result)
        except PluginError as e:
            self._pluginError(e)

    def _pluginFailed(self, failure):
        self.waiting = None
        if self.done:
            return None
        if failure.check(PluginError):
            self._pluginError(failure.value)
            return None
        self._log.failure("Rewriting {url} failed", failure, url=self._url())
        self.fail(502, "rewriting failed (see the proxyd log)")
        return None

    def _filter(self, run, *args):
        """A streaming filter call; None once a filter failed (and the exchange with it)."""
        try:
            return run(*args)
        except PluginError as e:
            self._pluginError(e)
            return None

    def _pluginError(self, error):
        self.fail(error.status, error.reason)

    def _url(self):
        return self.flow.request.url.decode("latin-1") if self.flow is not None else "-"

    def _requestPlanned(self, plan):
        if plan.response is not None:
            self._answer()
            return
        self.requestPlan = plan
        steps = plan.steps  # usually empty: no plugin wants the body
        if self.head.framing == h1.NO_BODY:
            if steps and plan.filters:
                self.pipeline.filterEnd(plan.filters, self.flow)
            self._route(self.originalURL)
        elif steps and plan.readers:
            self._takeRequestBody()
            self.requestBuffer = []
            self.flow.request.headers.removeHeader(b"expect")
            if self.head.expectContinue:
                self.channel.transport.write(CONTINUE)
            self.channel.releaseRequest()
        else:
            if steps:
                self._takeRequestBody()
                self.requestFilters = plan.filters or None
            self._route(self.originalURL)

    def _takeRequestBody(self):
        """
        A plugin wants the request body, whole or through a filter: from now
        on its events come to the C{_rewritten*} methods below.  Every other
        exchange relays its body with L{HttpExchange}'s methods directly
        (this class does not override them: no detour on the common path).
        """
        self.requestBody = self._rewrittenRequestBody
        self.requestEnd = self._rewrittenRequestEnd
        self._sendBodyStart = self._rewrittenSendBodyStart

    def _takeResponseBody(self):
        """As L{_takeRequestBody}, for the upstream's response body."""
        self.upstreamEvent = self._rewrittenUpstreamEvent

    def _route(self, originalURL):
        """Send the request where its (maybe rewritten) URL says (C{originalURL}: before the hooks)."""
        request = self.flow.request
        if request.url != originalURL:
            try:
                self._retarget(request)
            except ValueError as e:
                self._log.info("{url}: {why}", url=self._url(), why=str(e))
                self.fail(502, str(e))
                return
        else:
            hosts = request.headers.getRawHeaders(b"host")
            if hosts:
                self.hostHeader = hosts[-1]
        self.method = request.method
        HttpExchange.start(self)

    def _retarget(self, request):
        url = request.url
        try:
            scheme, host, port, path = splitURL(url)
        except ProxyError:
            raise ValueError("a plugin set an unusable URL {!r}".format(url.decode("latin-1")))
        oldHost = self.hostHeader
        newAuthority = formatAuthority(host, port, DEFAULT_PORTS[scheme])
        hostHeader = request.header(b"host", oldHost)
        if hostHeader == oldHost:
            hostHeader = newAuthority
            request.headers.setRawHeaders(b"Host", [hostHeader])
        if scheme == b"https":
            # The name TLS checks stays the intercepted one for the same host.
            self.tlsName = self.tlsName if self.tlsName is not None and host == self.host else host
        else:
            self.tlsName = None
        # As HttpExchange.__init__ makes it: the pool's key for this upstream.
        self.key = (host, port) if self.tlsName is None else ("https", host, port, self.tlsName)
        self.host, self.port, self.path, self.hostHeader = host, port, path, hostHeader

    # Request body

    def _rewrittenRequestBody(self, data):
        if self.requestBuffer is not None:
            self.requestBuffer.append(data)
            self.bufferSize += len(data)
            if self.bufferSize > self.pipeline.maxBodyBuffer:
                self._requestOverflow()
            return
        if self.requestFilters is not None:
            data = self._filter(self.pipeline.filterChunk, self.requestFilters, data, self.flow)
            if not data:
                return
        HttpExchange.requestBody(self, data)

    def _requestOverflow(self):
        plan = self.requestPlan
        self._overflowWarning(plan, "request")
        self.pendingBody, self.requestBuffer = self.requestBuffer, None
        self.requestFilters = plan.filters or None
        self.channel.holdRequest()  # the rest waits for the upstream
        self._route(self.originalURL)

    def _overflowWarning(self, plan, what):
        self._log.warn(
            "The {what} body of {url} is larger than --max-body-buffer ({limit} bytes): "
            "passed through untouched, without the body hook of {plugins}",
            what=what,
            url=self._url(),
            limit=self.pipeline.maxBodyBuffer,
            plugins=", ".join(stage.label for stage in plan.readers),
        )

    def _rewrittenRequestEnd(self):
        if self.requestBuffer is not None:
            self.requestDone = True
            body = b"".join(self.requestBuffer)
            self.requestBuffer = None
            self._step(self._requestBodyDone, self.pipeline.requestBody, self.flow, body, self.requestPlan)
            return
        if self.requestFilters is not None and not self.done and self.upstream is not None:
            tail = self._filter(self.pipeline.filterEnd, self.requestFilters, self.flow)
            if tail is None:
                return
            if tail:
                HttpExchange.requestBody(self, tail)
        HttpExchange.requestEnd(self)

    def _requestBodyDone(self, plan):
        if plan.response is not None:
            self._answer()
            return
        self.wholeBody = self.flow.request.body or b""
        self._route(self.originalURL)

    # Upstream request

    def _requestHeadBytes(self):
        data, self.upgrading, chunked = upstreamRequestHead(
            self.flow.request, self.head, self.path, self.hostHeader, self.wholeBody, self.requestFilters, self.forwarding
        )
        if chunked:
            self.upstreamChunked = True
        return data

    def _rewrittenSendBodyStart(self, conn):
        if self.wholeBody is not None:
            if self.wholeBody:
                conn.transport.write(self.wholeBody)
                self.requestBodySent += len(self.wholeBody)
                self.bytesIn += len(self.wholeBody)
            return
        pending, self.pendingBody = self.pendingBody, None
        HttpExchange._sendBodyStart(self, conn)
        for data in pending or ():
            self.requestBody(data)

    # Response

    def _responseHead(self, head):
        pipeline = self.pipeline
        if head.status == 101 or not pipeline.responseStages:
            HttpExchange._responseHead(self, head)
            return
        self.responseHead = head
        self.status = head.status
        flow = self.flow
        flow.response = Response.new(head.status, head.reason or statusPhrase(head.status), responseHeaders(head.headers))
        # _step(self._responsePlanned, ...), unrolled for the usual answer.
        try:
            plan = pipeline.responseHead(flow)
        except PluginError as e:
            self._pluginError(e)
            return
        if plan is NOTHING:
            if not self.done:
                self._streamHead(None)  # nothing asked of the body: it streams as it comes
        else:
            self._then(plan, self._responsePlanned, self._holdUpstream)

    def _holdUpstream(self):
        """Hooks are waiting on something: the upstream's body waits too."""
        conn = self.upstream
        self.upstreamHeld = True
        conn.reader.pause()
        conn.transport.pauseProducing()

    def _responsePlanned(self, plan):
        conn = self.upstream
        if plan.response is not None:
            # A plugin answered instead: the upstream's body is not wanted.
            conn.detach()
            conn.transport.abortConnection()
            self.upstream = None
            if plan.steps:
                self._step(self._sendWhole, self.pipeline.responseBody, self.flow, self.flow.response.body, plan)
            else:
                self._sendWhole()
            return
        self.responsePlan = plan
        lost, self.lostWhileHeld = self.lostWhileHeld, None
        head = self.responseHead
        steps = plan.steps  # usually empty: no plugin wants the body
        if not steps:
            self._streamHead(None)
        elif head.framing == h1.NO_BODY:
            if plan.filters:
                self.pipeline.filterEnd(plan.filters, self.flow)
            self._streamHead(None)
        elif plan.readers:
            self._takeResponseBody()
            self.responseBuffer = []
            self.bufferSize = 0
        else:
            self._takeResponseBody()
            self._streamHead(plan.filters or None)
        if not self.upstreamHeld:
            return  # the hooks answered at once: the reader goes on by itself
        self.upstreamHeld = False
        conn.reader.resume()
        if self.upstream is conn:
            if lost is not None:
                # What the origin sent before closing is all there is.
                HttpExchange.upstreamLost(self, *lost)
            else:
                conn.transport.resumeProducing()

    def upstreamLost(self, reason, conn):
        if self.waiting is not None and conn is self.upstream and self.responseHead is not None and not self.responseStarted:
            # Response hooks are running and the rest of the response is
            # queued in the paused reader: judge the close after it.
            self.lostWhileHeld = (reason, conn)
            return
        HttpExchange.upstreamLost(self, reason, conn)

    def _streamHead(self, filters):
        """Send the (rewritten) head of a body that streams from upstream."""
        head = self.responseHead
        response = self.flow.response
        self.responseStarted = True
        if filters is not None:
            self.responseFilters = filters
        self.status = response.status
        headers = wirePairs(response.headers)
        framingHeaders, framing, promised = streamedResponseFraming(head, filters)
        headers += framingHeaders
        if promised is not None:
            self.promisedLength = promised
        self._sendHead(response.status, response.reason, headers, framing, head.version, framing != h1.NO_BODY)

    def _rewrittenUpstreamEvent(self, kind, value):
        """C{upstreamEvent} once a plugin wants the response body (L{_takeResponseBody})."""
        if kind == h1.BODY:
            if self.responseFilters is None and self.responseBuffer is None:
                HttpExchange.upstreamEvent(self, kind, value)
                return
            self._responseBody(value)
        elif kind == h1.END and (self.responseBuffer is not None or self.responseFilters is not None):
            self._filteredEnd()
        else:
            HttpExchange.upstreamEvent(self, kind, value)

    def _responseBody(self, data):
        if self.responseBuffer is not None:
            self.responseBuffer.append(data)
            self.bufferSize += len(data)
            if self.bufferSize > self.pipeline.maxBodyBuffer:
                self._overflowWarning(self.responsePlan, "response")
                pending, self.responseBuffer = self.responseBuffer, None
                self._streamHead(self.responsePlan.filters or None)
                for chunk in pending:
                    self._responseBody(chunk)
            return
        if self.responseFilters is not None:
            data = self._filter(self.pipeline.filterChunk, self.responseFilters, data, self.flow)
            if not data:
                return
            self.sentLength += len(data)
        HttpExchange.upstreamEvent(self, h1.BODY, data)

    def _filteredEnd(self):
        if self.responseBuffer is not None:
            body = b"".join(self.responseBuffer)
            self.responseBuffer = None
            self._releaseUpstream()
            self._step(self._sendWhole, self.pipeline.responseBody, self.flow, body, self.responsePlan)
            return
        tail = self._filter(self.pipeline.filterEnd, self.responseFilters, self.flow)
        if tail is None:
            return
        if tail:
            self.sentLength += len(tail)
            HttpExchange.upstreamEvent(self, h1.BODY, tail)
        if self.promisedLength is not None and self.sentLength != self.promisedLength:
            self._log.error(
                "A filter that keeps the length changed the body of {url} ({sent} bytes, not {promised}); "
                "aborting the client connection",
                url=self._url(),
                sent=self.sentLength,
                promised=self.promisedLength,
            )
            self._upstreamGone()
            self._abortClient()
            return
        HttpExchange.upstreamEvent(self, h1.END, None)

    def _upstreamGone(self):
        conn = self.upstream
        if conn is not None:
            conn.detach()
            conn.transport.abortConnection()
            self.upstream = None

    # Whole responses (made by a plugin, or read whole for one)

    def _answer(self):
        """A request hook answered: the response hooks, then the client."""
        self._step(self._sendWhole, self.pipeline.madeResponse, self.flow)

    def _sendWhole(self, ignored=None):
        response = self.flow.response
        if self.head.framing == h1.NO_BODY:
            self.requestDone = True  # its END is queued behind the head
        self.responseStarted = True
        self.status = response.status
        headers = wirePairs(response.headers)
        framingHeaders, body = wholeResponseFraming(self.flow.request.method, response.status, response.body or b"")
        headers += framingHeaders
        if self.upstream is not None:
            self._upstreamGone()
        self._sendHead(response.status, response.reason, headers, h1.LENGTH, b"1.1", False)
        if body:
            self.channel.transport.write(body)
            self.bytesOut += len(body)
        self._finish()

    # Ending

    def clientLost(self):
        waiting, self.waiting = self.waiting, None
        HttpExchange.clientLost(self)
        if waiting is not None:
            waiting.cancel()
