# -*- test-case-name: tests.unit.test_pipeline -*-
"""
The rewriter chain every mode's exchanges call: which hooks each round
runs, in --plugin order, and what their answers mean (READ_BODY, filters,
short-circuit responses, connect decisions).  L{proxyd.hooks} runs the
rounds: Deferreds bounded by --plugin-timeout, failures turned into one
log entry and a L{PluginError} (502, or 504 for a hook that never answered).

Sans-I/O apart from the clock: it never touches a connection.  It says
what to do next (a L{Plan}) and the exchange does it, so the same chain
serves forward, mitm and reverse exchanges and the test helpers in
L{proxyd.testing}.
"""

from twisted.internet.defer import maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from proxyd.hooks import HookRunner, PluginError, then

from proxyd.interfaces import (
    INTERCEPT,
    READ_BODY,
    TUNNEL,
    Deny,
    IBodyFilter,
    IConnectPolicy,
    IRequestRewriter,
    IResponseRewriter,
)
from proxyd.message import Response

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024


class Stage:
    """
    One --plugin occurrence: its label (the name, or C{name#2} for a second
    occurrence of the same plugin) and its rewriter.
    """

    __slots__ = ("label", "rewriter")

    def __init__(self, label, rewriter):
        self.label = label
        self.rewriter = rewriter

    def __repr__(self):
        return "<Stage {}>".format(self.label)


class Plan:
    """
    What the exchange does after a round of head hooks.

    @ivar response: a L{Response} to send instead (short-circuit, or a
        replacement from a response hook), or None.
    @ivar steps: (stage, READ_BODY or an L{IBodyFilter}) in stage order,
        for the stages that want the body.
    """

    __slots__ = ("response", "steps")

    def __init__(self, response=None, steps=()):
        self.response = response
        self.steps = steps

    @property
    def readers(self):
        """The stages that asked for the whole body."""
        return [stage for stage, how in self.steps if how is READ_BODY]

    @property
    def filters(self):
        """The (stage, filter) pairs the body streams through."""
        return [(stage, how) for stage, how in self.steps if how is not READ_BODY]


# The plan of almost every round: no response, no body wanted.  Shared, so
# never changed (nothing changes a Plan once made).
NOTHING = Plan()


def _plan(response, steps):
    """A L{Plan}, or L{NOTHING} for an empty one."""
    return NOTHING if response is None and not steps else Plan(response, steps)


def _isResponse(value):
    return isinstance(value, Response)


class Pipeline:
    """
    The chain of stages, split by what each rewriter provides.

    @ivar active: whether any stage rewrites HTTP (if not, exchanges skip
        building flows altogether).
    """

    _log = Logger()

    def __init__(self, stages=(), clock=None, maxBodyBuffer=DEFAULT_MAX_BODY, timeout=DEFAULT_TIMEOUT):
        if clock is None:
            from twisted.internet import reactor as clock
        self.stages = tuple(stages)
        self.clock = clock
        self.maxBodyBuffer = maxBodyBuffer
        self.timeout = timeout
        self.runner = HookRunner(clock, timeout)
        self.requestStages = tuple(s for s in self.stages if IRequestRewriter.providedBy(s.rewriter))
        self.responseStages = tuple(s for s in self.stages if IResponseRewriter.providedBy(s.rewriter))
        self.connectStages = tuple(s for s in self.stages if IConnectPolicy.providedBy(s.rewriter))
        self.active = bool(self.requestStages or self.responseStages)
        # (stage, bound hook) pairs, made once: what HookRunner.run calls.
        self._requestHeads = tuple((s, s.rewriter.requestHead) for s in self.requestStages)
        self._responseHeads = tuple((s, s.rewriter.responseHead) for s in self.responseStages)
        self._connectDecisions = tuple((s, s.rewriter.connectDecision) for s in self.connectStages)

    # Heads

    def requestHead(self, flow):
        """
        Every requestHead in order, until one answers with a Response
        (which is also put in C{flow.response}).

        @return: Deferred[L{Plan}].
        """
        steps = []

        def answer(stage, value):
            if _isResponse(value):
                _complete(value)
                flow.response = value
                return True
            if value is READ_BODY or IBodyFilter.providedBy(value):
                steps.append((stage, value))
                return False
            raise _bad(stage, "requestHead", value, "None, READ_BODY, an IBodyFilter or a Response")

        ran = self.runner.run(self._requestHeads, (flow,), answer, flow, "requestHead")
        if ran is None:  # every hook answered at once (inlined _plan: this runs per request)
            return NOTHING if flow.response is None and not steps else Plan(flow.response, steps)
        return ran.addCallback(lambda _: _plan(flow.response, steps))

    def responseHead(self, flow):
        """
        Every responseHead in order on C{flow.response}.  A Response answer
        replaces C{flow.response}; later stages see the replacement, and
        what every stage asked of the body applies to the body finally sent.

        @return: Deferred[L{Plan}]: C{response} is the replacement, whose
            body is whole, if there was one.
        """
        steps = []
        replaced = []

        def answer(stage, value):
            if value is READ_BODY or IBodyFilter.providedBy(value):
                steps.append((stage, value))
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                replaced.append(value)
                return False
            raise _bad(stage, "responseHead", value, "None, READ_BODY, an IBodyFilter or a Response")

        ran = self.runner.run(self._responseHeads, (flow,), answer, flow, "responseHead")
        if ran is None:  # every hook answered at once (inlined _plan)
            return Plan(replaced[-1], steps) if replaced else Plan(None, steps) if steps else NOTHING
        return ran.addCallback(lambda _: _plan(replaced[-1] if replaced else None, steps))

    # Whole bodies

    def requestBody(self, flow, body, plan):
        """
        The whole request body through C{plan.steps} in order: filters over
        the whole body, requestBody for the readers.  The result is in
        C{flow.request.body}.

        @return: Deferred[L{Plan}] with C{response} set on a short-circuit.
        """
        flow.request.body = body
        ran = self._runBody(flow, flow.request, plan.steps, "requestBody", True)
        return then(ran, lambda _: _plan(flow.response, ()))

    def responseBody(self, flow, body, plan):
        """
        As L{runRequestBody} for C{flow.response}; a Response answer
        replaces it (later steps see the new one).

        @return: Deferred[None].
        """
        flow.response.body = body
        return self._runBody(flow, flow.response, plan.steps, "responseBody", False)

    def _runBody(self, flow, message, steps, hook, stopOnResponse):
        def current():
            return flow.request if stopOnResponse else flow.response

        def reader(method):
            return lambda: method(flow, current().body)

        def filterer(step):
            return lambda: self.filterWhole([step], current().body, flow)

        def answer(stage, value):
            if isinstance(value, bytes):
                current().body = value
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                return stopOnResponse
            raise _bad(stage, hook, value, "None, bytes or a Response")

        items = [
            (stage, reader(getattr(stage.rewriter, hook)) if how is READ_BODY else filterer((stage, how)))
            for stage, how in steps
        ]
        return self.runner.run(items, (), answer, flow, hook)

    def madeResponse(self, flow):
        """
        The response hooks for a response that is already whole (made by a
        request hook): heads, then the body steps.

        @return: Deferred[None]; the result is in C{flow.response}.
        """

        def heads(plan):
            if not plan.steps:
                return None
            return self.responseBody(flow, flow.response.body, plan)

        return then(self.responseHead(flow), heads)

    # The same, always as Deferreds (for callers that want one, like
    # proxyd.testing.PluginTester); the methods above return their result
    # directly when every hook answered at once, and raise PluginError.

    def runRequestHead(self, flow):
        """L{requestHead} as a Deferred."""
        return maybeDeferred(self.requestHead, flow)

    def runRequestBody(self, flow, body, plan):
        """L{requestBody} as a Deferred."""
        return maybeDeferred(self.requestBody, flow, body, plan)

    def runResponseHead(self, flow):
        """L{responseHead} as a Deferred."""
        return maybeDeferred(self.responseHead, flow)

    def runResponseBody(self, flow, body, plan):
        """L{responseBody} as a Deferred."""
        return maybeDeferred(self.responseBody, flow, body, plan)

    def runMadeResponse(self, flow):
        """L{madeResponse} as a Deferred."""
        return maybeDeferred(self.madeResponse, flow)

    # Streaming filters

    def filterChunk(self, filters, data, subject):
        """
        C{data} through each (stage, filter) in turn.

        @raise PluginError: a filter raised (logged here) or returned
            something other than bytes.
        """
        for stage, bodyFilter in filters:
            if not data:
                break  # held back: later filters see it when it comes
            data = self._filterCall(stage, bodyFilter.filterChunk, "filterChunk", (data,), subject)
        return data

    def filterEnd(self, filters, subject):
        """End every filter; what one releases at its end goes through the later ones."""
        data = b""
        for stage, bodyFilter in filters:
            if data:
                data = self._filterCall(stage, bodyFilter.filterChunk, "filterChunk", (data,), subject)
            data += self._filterCall(stage, bodyFilter.filterEnd, "filterEnd", (), subject)
        return data

    def filterWhole(self, filters, body, subject):
        """A whole body through the filters."""
        data = self.filterChunk(filters, body, subject) if body else b""
        return data + self.filterEnd(filters, subject)

    def _filterCall(self, stage, method, hook, args, subject):
        try:
            value = method(*args)
        except Exception:
            raise self.runner.hookFailed(Failure(), stage.label, hook, subject)
        if not isinstance(value, bytes):
            raise _bad(stage, hook, value, "bytes")
        return value

    # CONNECT

    def runConnect(self, target):
        """
        The first connect policy's answer that is not None.

        @return: Deferred[INTERCEPT | TUNNEL | L{Deny} | None].
        """
        decision = []

        def answer(stage, value):
            if value in (INTERCEPT, TUNNEL) or isinstance(value, Deny):
                decision.append(value)
                return True
            raise _bad(stage, "connectDecision", value, "None, INTERCEPT, TUNNEL or Deny")

        if not self.connectStages:
            return succeed(None)
        return maybeDeferred(
            lambda: then(
                self.runner.run(self._connectDecisions, (target,), answer, target, "connectDecision"),
                lambda _: decision[0] if decision else None,
            )
        )

def _bad(stage, hook, value, expected):
    """A hook answered with something outside its contract."""
    Pipeline._log.error(
        "Plugin {plugin} returned {value!r} from {hook}; expected {expected}",
        plugin=stage.label,
        value=value,
        hook=hook,
        expected=expected,
    )
    return PluginError(
        502, stage.label, hook,
        "plugin {} returned {} from {} (expected {})".format(stage.label, type(value).__name__, hook, expected),
    )


def _complete(response):
    """A response a plugin made always has a body (maybe empty)."""
    if response.body is None:
        response.body = b""


