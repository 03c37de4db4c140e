# -*- test-case-name: tests.unit.test_channel -*-
"""
Fakes for testing proxyd without sockets: a client connection on a
StringTransport that can half-close, and a way to complete the upstream
connections proxyd asks a MemoryReactorClock for.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from proxyd.factory import ProxyFactory
from proxyd.config import ProxyConfig
from proxyd.policy import AddressPolicy, PortSet


class HalfCloseTransport(StringTransport):
    """A StringTransport that also records C{loseWriteConnection}."""

    writeClosed = False

    def loseWriteConnection(self):
        self.writeClosed = True


def makeConfig(**kwargs):
    """A ProxyConfig for tests: private upstreams allowed, any CONNECT port."""
    kwargs.setdefault("addressPolicy", AddressPolicy(True, False))
    kwargs.setdefault("connectPorts", PortSet.parse("*"))
    return ProxyConfig(**kwargs)


class FakeProxy:
    """
    A L{ProxyFactory} on a MemoryReactorClock, with helpers to open client
    connections and to complete or fail the upstream connections it starts.
    """

    def __init__(self, accessLog=None, rewriters=(), **configArgs):
        """
        @param rewriters: plugin rewriters to run, in order (as if given
            with --plugin).
        """
        from proxyd.pluginload import LoadedPlugin

        if rewriters:
            configArgs["plugins"] = tuple(
                LoadedPlugin(getattr(r, "name", None) or type(r).__name__, type(r).__name__, {}, r) for r in rewriters
            )
        self.reactor = MemoryReactorClock()
        self.config = makeConfig(**configArgs)
        self.factory = ProxyFactory(self.config, self.reactor, accessLog)
        self._completed = 0

    def client(self, host="127.0.0.1"):
        """A new client connection: (channel, transport)."""
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, 50000))
        transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", host, 50000))
        proto.makeConnection(transport)
        return proto, transport

    def pendingConnects(self):
        """(host, port) of the upstream connections not yet completed."""
        return [(c[0], c[1]) for c in self.reactor.tcpClients[self._completed:]]

    def acceptUpstream(self):
        """Complete the oldest pending upstream connection: (protocol, transport)."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[self._completed]
        self._completed += 1
        address = IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(address)
        transport = HalfCloseTransport(peerAddress=address)
        proto.makeConnection(transport)
        return proto, transport

    def refuseUpstream(self, reason):
        """Fail the oldest pending upstream connection with C{reason}."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[self._completed]
        self._completed += 1
        connector = self.reactor.connectors[self._completed - 1]
        factory.clientConnectionFailed(connector, Failure(reason))


def lose(proto, reason=None):
    """Tell C{proto} its connection closed (cleanly unless C{reason})."""
    proto.connectionLost(Failure(reason if reason is not None else ConnectionDone()))


# Plugin testing: run rewriters the way proxyd does, without a reactor or
# sockets.


def makeFlow(method=b"GET", url=b"http://example.com/", headers=None, body=None, mode="forward", client="127.0.0.1"):
    """
    A L{Flow} as a request hook first sees it.

    @param headers: a dict or a list of (name, value) pairs (str or bytes).
    @param body: the request body the client sends (bytes), or None.
    """
    from proxyd.message import Flow, Request

    request = Request(method, url, headers)
    flow = Flow(request, mode=mode, client=client)
    flow.notes["_clientBody"] = body
    return flow


def makeResponse(status=200, headers=None, body=b"", reason=b""):
    """
    A L{Response} as the upstream sends it, for L{PluginTester.response}.
    """
    from proxyd.errors import statusPhrase
    from proxyd.message import Response

    return Response(status, reason or statusPhrase(status), headers, body)


class StillWaiting(AssertionError):
    """A hook's Deferred has not fired; advance C{tester.clock} or fire it."""


def resultOf(d):
    """
    The result of a Deferred that has fired: the value, or the exception
    raised again.  L{StillWaiting} if it has not fired.
    """
    results = []
    d.addBoth(results.append)
    if not results:
        raise StillWaiting("the pipeline is waiting on a hook's Deferred")
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class PluginTester:
    """
    Runs rewriters through proxyd's own pipeline, as an exchange would,
    with a fake clock.  Every method returns a Deferred; use
    L{resultOf} (or trial's C{successResultOf}).

        tester = PluginTester(plugin.makeRewriter({"key": "value"}))
        flow = resultOf(tester.request(makeFlow(url=b"http://a.test/")))

    @ivar clock: the L{MemoryReactorClock} hooks' time limits run on.
    @ivar warnings: the lines proxyd would log as warnings (a body larger
        than C{maxBodyBuffer}).
    """

    def __init__(self, *rewriters, maxBodyBuffer=10 * 1024 * 1024, timeout=30.0, chunkSize=16384):
        """
        @param chunkSize: streamed bodies reach L{IBodyFilter}s in chunks of
            this many bytes (try 1 to test chunk boundaries).
        """
        from proxyd.pipeline import Pipeline, Stage

        self.chunkSize = chunkSize
        self.clock = MemoryReactorClock()
        stages = []
        seen = {}
        for rewriter in rewriters:
            name = getattr(rewriter, "name", None) or type(rewriter).__name__
            seen[name] = seen.get(name, 0) + 1
            stages.append(Stage(name if seen[name] == 1 else "{}#{}".format(name, seen[name]), rewriter))
        self.pipeline = Pipeline(stages, self.clock, maxBodyBuffer, timeout)
        self.warnings = []

    def _fits(self, flow, body, plan):
        if len(body) <= self.pipeline.maxBodyBuffer:
            return True
        self.warnings.append(
            "body of {} bytes for {} is larger than the buffer limit; passed through without {}".format(
                len(body), flow.request.url.decode("latin-1"), ", ".join(s.label for s in plan.readers)
            )
        )
        return False

    def _body(self, flow, message, body, plan, runWhole):
        """What an exchange does with a body, given the head hooks' plan."""
        if not plan.steps:
            message.body = body
            return None
        if plan.readers and body is not None and self._fits(flow, body, plan):
            return runWhole(flow, body, plan)
        # Streamed: the filters only, in chunks of chunkSize.
        filters = plan.filters
        out = []
        data = body or b""
        for start in range(0, len(data), self.chunkSize):
            out.append(self.pipeline.filterChunk(filters, data[start:start + self.chunkSize], flow))
        out.append(self.pipeline.filterEnd(filters, flow))
        message.body = b"".join(out) if body is not None or any(out) else None
        return None

    def request(self, flow):
        """
        The request hooks: heads, then what they asked of the body the
        client sent (C{makeFlow(body=...)}), then the response hooks if one
        of them answered.

        @return: Deferred[flow]: C{flow.request.body} is the body as sent
            upstream; C{flow.response} is set on a short-circuit.
        """
        body = flow.notes.pop("_clientBody", None)
        pipeline = self.pipeline

        def heads(plan):
            if plan.response is not None:
                return pipeline.runMadeResponse(flow)
            return self._body(flow, flow.request, body, plan, pipeline.runRequestBody)

        def answered(plan):
            if isinstance(plan, Plan) and plan.response is not None:
                return pipeline.runMadeResponse(flow)
            return None

        from proxyd.pipeline import Plan

        return pipeline.runRequestHead(flow).addCallback(heads).addCallback(answered).addCallback(lambda _: flow)

    def response(self, flow, response):
        """
        The response hooks for C{response} coming from upstream (its body,
        if any, is what the upstream sends).

        @return: Deferred[flow]; the result is C{flow.response}.
        """
        pipeline = self.pipeline
        body = response.body
        response.body = None
        flow.response = response

        def heads(plan):
            if plan.response is not None:
                if plan.steps:
                    return pipeline.runResponseBody(flow, flow.response.body, plan)
                return None
            return self._body(flow, flow.response, body, plan, pipeline.runResponseBody)

        return pipeline.runResponseHead(flow).addCallback(heads).addCallback(lambda _: flow)

    def exchange(self, flow, response):
        """L{request}, then L{response} unless a request hook answered."""

        def upstream(flow):
            if flow.response is not None:
                return flow
            return self.response(flow, response)

        return self.request(flow).addCallback(upstream)

    def connect(self, host, port=443, sni=None, client="127.0.0.1"):
        """
        The connect policies' decision for a CONNECT.

        @return: Deferred[INTERCEPT | TUNNEL | Deny | None].
        """
        from proxyd.message import ConnectTarget

        return self.pipeline.runConnect(ConnectTarget(host, port, sni, client))
