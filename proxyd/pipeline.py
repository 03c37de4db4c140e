# -*- test-case-name: tests.unit.test_pipeline -*-
"""
The rewriter chain every mode's exchanges call: hooks in --plugin order,
each answer checked, Deferreds bounded by --plugin-timeout, failures
turned into one log entry and a L{PluginError} the exchange renders as 502
(or 504 for a hook that never answered).

Sans-I/O apart from the clock: it never touches a connection.  It says
what to do next (a L{Plan}) and the exchange does it, so the same chain
serves forward, mitm and reverse exchanges and the test helpers in
L{proxyd.testing}.
"""

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

from proxyd.interfaces import (
    INTERCEPT,
    READ_BODY,
    TUNNEL,
    Deny,
    IConnectPolicy,
    IRequestRewriter,
    IResponseRewriter,
)
from proxyd.message import Response

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024


class PluginError(Exception):
    """
    A hook failed (502) or did not answer in time (504).

    @ivar status: 502 or 504.
    @ivar plugin: the plugin's label.
    @ivar hook: the hook's name.
    @ivar reason: one line for the error response.
    """

    def __init__(self, status, plugin, hook, reason):
        Exception.__init__(self, status, plugin, hook, reason)
        self.status = status
        self.plugin = plugin
        self.hook = hook
        self.reason = reason

    def __str__(self):
        return self.reason


class _TimedOut(Exception):
    pass


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
    What the exchange does after a head hook round.

    @ivar response: a L{Response} to send instead (short-circuit), or None.
    @ivar readers: the stages that asked for the whole body, in order.
    """

    __slots__ = ("response", "readers")

    def __init__(self, response=None, readers=()):
        self.response = response
        self.readers = readers


_NO_CHANGE = Plan()


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
        self.requestStages = tuple(s for s in self.stages if IRequestRewriter.providedBy(s.rewriter))
        self.responseStages = tuple(s for s in self.stages if IResponseRewriter.providedBy(s.rewriter))
        self.connectStages = tuple(s for s in self.stages if IConnectPolicy.providedBy(s.rewriter))
        self.active = bool(self.requestStages or self.responseStages)

    # Requests

    def runRequestHead(self, flow):
        """
        Every requestHead in order, until one answers with a Response.

        @return: Deferred[L{Plan}]; a Response is also put in
            C{flow.response}.
        """
        readers = []

        def answer(stage, value):
            if value is None:
                return False
            if value is READ_BODY:
                readers.append(stage)
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                return True
            raise _bad(stage, "requestHead", value, "None, READ_BODY or a Response")

        d = self._run(self.requestStages, "requestHead", lambda stage: (flow,), answer, flow)
        return d.addCallback(lambda _: Plan(flow.response, readers))

    def runRequestBody(self, flow, body, readers):
        """
        requestBody of each stage in C{readers}, with the body as the
        previous one left it (also kept in C{flow.request.body}).

        @return: Deferred[L{Plan}] with C{response} set on a short-circuit.
        """
        flow.request.body = body

        def answer(stage, value):
            if value is None:
                return False
            if isinstance(value, bytes):
                flow.request.body = value
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                return True
            raise _bad(stage, "requestBody", value, "None, bytes or a Response")

        d = self._run(readers, "requestBody", lambda stage: (flow, flow.request.body), answer, flow)
        return d.addCallback(lambda _: Plan(flow.response))

    # Responses

    def runResponseHead(self, flow):
        """
        Every responseHead in order on C{flow.response}.  A Response answer
        replaces C{flow.response}; later stages see the replacement.

        @return: Deferred[L{Plan}]: C{response} is the replacement if there
            was one (its body is whole: no body hooks need the upstream's);
            C{readers} the stages that asked for the body.
        """
        readers = []
        replaced = []

        def answer(stage, value):
            if value is None:
                return False
            if value is READ_BODY:
                readers.append(stage)
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                replaced.append(value)
                return False
            raise _bad(stage, "responseHead", value, "None, READ_BODY or a Response")

        d = self._run(self.responseStages, "responseHead", lambda stage: (flow,), answer, flow)
        return d.addCallback(lambda _: Plan(replaced[-1] if replaced else None, readers))

    def runResponseBody(self, flow, body, readers):
        """
        responseBody of each stage in C{readers}; the result is left in
        C{flow.response} (its C{body}, or a whole replacement).

        @return: Deferred[None].
        """
        flow.response.body = body

        def answer(stage, value):
            if value is None:
                return False
            if isinstance(value, bytes):
                flow.response.body = value
                return False
            if _isResponse(value):
                _complete(value)
                flow.response = value
                return False
            raise _bad(stage, "responseBody", value, "None, bytes or a Response")

        return self._run(readers, "responseBody", lambda stage: (flow, flow.response.body), answer, flow)

    def runMadeResponse(self, flow):
        """
        The response hooks for a response that is already whole (made by a
        request hook): heads, then bodies for the stages that ask.

        @return: Deferred[None]; the result is in C{flow.response}.
        """

        def heads(plan):
            if not plan.readers:
                return None
            return self.runResponseBody(flow, flow.response.body, plan.readers)

        return self.runResponseHead(flow).addCallback(heads)

    # CONNECT

    def runConnect(self, target):
        """
        The first connect policy's answer that is not None.

        @return: Deferred[INTERCEPT | TUNNEL | L{Deny} | None].
        """
        decision = []

        def answer(stage, value):
            if value is None:
                return False
            if value in (INTERCEPT, TUNNEL) or isinstance(value, Deny):
                decision.append(value)
                return True
            raise _bad(stage, "connectDecision", value, "None, INTERCEPT, TUNNEL or Deny")

        if not self.connectStages:
            return succeed(None)
        d = self._run(self.connectStages, "connectDecision", lambda stage: (target,), answer, target)
        return d.addCallback(lambda _: decision[0] if decision else None)

    # The loop

    def _run(self, stages, hook, args, answer, subject):
        """
        Call C{hook} on each stage in order; C{answer(stage, value)} returns
        True to stop.  Synchronous hooks run in a plain loop: a Deferred is
        only waited for when a hook returns one that has not fired.

        @return: a Deferred firing with None, or failing with L{PluginError}.
        """
        done = Deferred(canceller=lambda d: pending and pending[0].cancel())
        pending = []

        def step(index):
            while index < len(stages):
                stage = stages[index]
                try:
                    value = getattr(stage.rewriter, hook)(*args(stage))
                    if isinstance(value, Deferred):
                        pending[:] = [value]
                        if not value.called:
                            value.addTimeout(self.timeout, self.clock, _timedOut)
                        value.addCallbacks(resumed, failed, (stage, index), None, (stage,))
                        return
                    if answer(stage, value):
                        break
                except PluginError as e:
                    done.errback(e)
                    return
                except BaseException:
                    failed(None, stage)
                    return
                index += 1
            done.callback(None)

        def resumed(value, stage, index):
            del pending[:]
            if done.called:
                return
            try:
                if answer(stage, value):
                    done.callback(None)
                    return
            except PluginError as e:
                done.errback(e)
                return
            step(index + 1)

        def failed(failure, stage):
            del pending[:]
            if done.called:
                return None
            if failure is not None and failure.check(_TimedOut):
                self._log.warn(
                    "Plugin {plugin} did not answer {hook} within {t:g}s for {subject}",
                    plugin=stage.label,
                    hook=hook,
                    t=self.timeout,
                    subject=_describe(subject),
                )
                done.errback(
                    PluginError(
                        504, stage.label, hook,
                        "plugin {} did not answer {} within {:g}s".format(stage.label, hook, self.timeout),
                    )
                )
                return None
            if failure is None:
                from twisted.python.failure import Failure

                failure = Failure()
            self._log.failure(
                "Plugin {plugin} failed in {hook} for {subject}",
                failure,
                plugin=stage.label,
                hook=hook,
                subject=_describe(subject),
            )
            done.errback(
                PluginError(
                    502, stage.label, hook,
                    "plugin {} failed in {}: {} (traceback in the proxyd log)".format(
                        stage.label, hook, failure.type.__name__
                    ),
                )
            )
            return None

        step(0)
        return done


def _timedOut(result, timeout):
    if hasattr(result, "check") and result.check(CancelledError):
        raise _TimedOut()
    return result


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


def _describe(subject):
    request = getattr(subject, "request", None)
    if request is not None:
        return "{} {}".format(request.method.decode("latin-1"), request.url.decode("latin-1"))
    host = getattr(subject, "host", None)
    if host is not None:
        return "CONNECT {}:{}".format(host, subject.port)
    return repr(subject)
