"""
Tests for L{proxyd.pipeline} (the rewriter chain: order, Deferreds, time
limits, short-circuits, body steps, failures) and for the plugin API's
no-op base classes and L{Deny} in L{proxyd.interfaces}.
"""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from proxyd.interfaces import (
    INTERCEPT,
    READ_BODY,
    TUNNEL,
    BodyFilter,
    ConnectPolicy,
    Deny,
    IBodyFilter,
    IConnectPolicy,
    IRequestRewriter,
    IResponseRewriter,
    RequestRewriter,
    ResponseRewriter,
    Rewriter,
)
from proxyd.message import ConnectTarget, Response
from proxyd.pipeline import NOTHING, Pipeline, PluginError, Plan, Stage
from proxyd.testing import makeFlow, makeResponse

TIMEOUT = 10.0


class Recorder(Rewriter, ConnectPolicy):
    """
    Request, response and connect hooks that record their calls in a list
    shared by the test and answer what the test says.

    @ivar answers: hook name to the answer, or to a callable given the
        hook's arguments that returns the answer.
    """

    def __init__(self, name, calls, **answers):
        self.name = name
        self.calls = calls
        self.answers = answers

    def _answer(self, hook, *args):
        self.calls.append((self.name, hook))
        answer = self.answers.get(hook)
        if callable(answer):
            return answer(*args)
        return answer

    def requestHead(self, flow):
        return self._answer("requestHead", flow)

    def requestBody(self, flow, body):
        return self._answer("requestBody", flow, body)

    def responseHead(self, flow):
        return self._answer("responseHead", flow)

    def responseBody(self, flow, body):
        return self._answer("responseBody", flow, body)

    def connectDecision(self, target):
        return self._answer("connectDecision", target)


class Boom(Exception):
    """What a broken hook raises."""


def _raise(*args):
    raise Boom("hook broke")


@implementer(IBodyFilter)
class Holder:
    """A filter that holds everything back and releases it, upper-cased, at the end."""

    keepsLength = False

    def __init__(self, calls, name="holder"):
        self.calls = calls
        self.name = name
        self.held = b""

    def filterChunk(self, data):
        self.calls.append((self.name, "filterChunk", data))
        self.held += data
        return b""

    def filterEnd(self):
        self.calls.append((self.name, "filterEnd"))
        return self.held.upper()


@implementer(IBodyFilter)
class Tagger:
    """A filter that wraps each chunk in brackets and ends with a tag."""

    keepsLength = False

    def __init__(self, calls, name="tagger"):
        self.calls = calls
        self.name = name

    def filterChunk(self, data):
        self.calls.append((self.name, "filterChunk", data))
        return b"[" + data + b"]" if data else b""

    def filterEnd(self):
        self.calls.append((self.name, "filterEnd"))
        return b"<end>"


class PipelineTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.calls = []
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def pipeline(self, *rewriters, **kwargs):
        """A pipeline of Recorders (name, answers) or rewriters, labelled by name."""
        stages = []
        for rewriter in rewriters:
            if isinstance(rewriter, tuple):
                name, answers = rewriter
                rewriter = Recorder(name, self.calls, **answers)
            stages.append(Stage(rewriter.name, rewriter))
        kwargs.setdefault("timeout", TIMEOUT)
        return Pipeline(stages, self.clock, **kwargs)

    def failures(self):
        """The logged events that carry a failure."""
        return [event for event in self.events if "log_failure" in event]

    def errors(self):
        """The events logged at warn level or above."""
        return [event for event in self.events if event["log_level"] >= LogLevel.warn]


class OrderTests(PipelineTestCase):
    def test_requestHooksInOrder(self):
        """requestHead runs once per stage, in --plugin order."""
        pipeline = self.pipeline(("a", {}), ("b", {}), ("c", {}))
        plan = self.successResultOf(pipeline.runRequestHead(makeFlow()))
        self.assertEqual(self.calls, [("a", "requestHead"), ("b", "requestHead"), ("c", "requestHead")])
        self.assertIsNone(plan.response)
        self.assertEqual(list(plan.steps), [])
        self.assertIs(plan, NOTHING, "a round that asks for nothing shares one empty Plan")

    def test_responseHooksInOrder(self):
        """responseHead runs once per stage, in --plugin order, seeing flow.response."""
        seen = []
        pipeline = self.pipeline(("a", {}), ("b", {"responseHead": lambda flow: seen.append(flow.response)}))
        flow = makeFlow()
        flow.response = makeResponse(200)
        plan = self.successResultOf(pipeline.runResponseHead(flow))
        self.assertEqual(self.calls, [("a", "responseHead"), ("b", "responseHead")])
        self.assertEqual(seen, [flow.response])
        self.assertIsNone(plan.response)

    def test_synchronousHooksNoTimer(self):
        """Hooks that answer at once, or with a fired Deferred, leave no timer behind."""
        pipeline = self.pipeline(("a", {}), ("b", {"requestHead": lambda flow: succeed(None)}), ("c", {}))
        self.successResultOf(pipeline.runRequestHead(makeFlow()))
        self.assertEqual([c[0] for c in self.calls], ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deferredHoldsChain(self):
        """A hook's unfired Deferred holds the later hooks until it fires."""
        waiting = Deferred()
        pipeline = self.pipeline(("a", {"requestHead": lambda flow: waiting}), ("b", {}))
        d = pipeline.runRequestHead(makeFlow())
        self.assertNoResult(d)
        self.assertEqual(self.calls, [("a", "requestHead")])
        waiting.callback(None)
        plan = self.successResultOf(d)
        self.assertEqual(self.calls, [("a", "requestHead"), ("b", "requestHead")])
        self.assertIsNone(plan.response)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deferredAnswerCounts(self):
        """What a hook's Deferred fires with is its answer."""
        waiting = Deferred()
        pipeline = self.pipeline(("a", {"requestHead": lambda flow: waiting}))
        d = pipeline.runRequestHead(makeFlow(method=b"POST", body=b"x"))
        waiting.callback(READ_BODY)
        plan = self.successResultOf(d)
        self.assertEqual([(s.label, how) for s, how in plan.steps], [("a", READ_BODY)])

    def test_activeOnlyForHTTPRewriters(self):
        """A pipeline of connect policies only is not active; one with a rewriter is."""
        policyOnly = self.pipeline(ConnectPolicyNamed("p"))
        self.assertFalse(policyOnly.active)
        self.assertEqual(len(policyOnly.connectStages), 1)
        self.assertFalse(self.pipeline().active)
        self.assertTrue(self.pipeline(RequestRewriterNamed("r")).active)
        self.assertTrue(self.pipeline(ResponseRewriterNamed("r")).active)

    def test_stagesSplitByInterface(self):
        """Each stage is in the lists for the interfaces its rewriter provides."""
        request, response, both = RequestRewriterNamed("q"), ResponseRewriterNamed("s"), Recorder("b", [])
        pipeline = self.pipeline(request, response, both)
        self.assertEqual([s.label for s in pipeline.requestStages], ["q", "b"])
        self.assertEqual([s.label for s in pipeline.responseStages], ["s", "b"])
        self.assertEqual([s.label for s in pipeline.connectStages], ["b"])


class RequestRewriterNamed(RequestRewriter):
    def __init__(self, name):
        self.name = name


class ResponseRewriterNamed(ResponseRewriter):
    def __init__(self, name):
        self.name = name


class ConnectPolicyNamed(ConnectPolicy):
    def __init__(self, name):
        self.name = name


class FailureTests(PipelineTestCase):
    def test_timeout(self):
        """
        A hook whose Deferred never fires fails after the timeout with a 504
        naming the plugin and the hook; later hooks are never called.
        """
        cancelled = []
        waiting = Deferred(cancelled.append)
        pipeline = self.pipeline(("a", {}), ("slow", {"requestHead": lambda flow: waiting}), ("c", {}))
        d = pipeline.runRequestHead(makeFlow())
        self.clock.advance(TIMEOUT - 0.5)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        error = self.failureResultOf(d, PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (504, "slow", "requestHead"))
        self.assertIn("slow", str(error))
        self.assertIn("requestHead", str(error))
        self.assertEqual(self.calls, [("a", "requestHead"), ("slow", "requestHead")])
        self.assertEqual(cancelled, [waiting])
        self.clock.advance(1000)
        self.assertEqual(self.calls, [("a", "requestHead"), ("slow", "requestHead")])
        [warning] = self.errors()
        self.assertEqual(warning["plugin"], "slow")
        self.assertEqual(warning["log_level"], LogLevel.warn)
        self.assertEqual(self.failures(), [])

    def test_timeoutSetting(self):
        """The time limit is the pipeline's timeout."""
        pipeline = self.pipeline(("slow", {"requestHead": lambda flow: Deferred()}), timeout=2.5)
        d = pipeline.runRequestHead(makeFlow())
        self.clock.advance(2.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, PluginError).value.status, 504)

    def test_raisingHook(self):
        """
        A hook that raises gives a 502 naming the plugin and the hook, logged
        once with the traceback; later hooks are not called.
        """
        pipeline = self.pipeline(("a", {}), ("broken", {"requestHead": _raise}), ("c", {}))
        d = pipeline.runRequestHead(makeFlow(url=b"http://a.test/x"))
        error = self.failureResultOf(d, PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "broken", "requestHead"))
        self.assertIn("plugin broken failed in requestHead", str(error))
        self.assertIn("Boom", str(error))
        self.assertEqual(self.calls, [("a", "requestHead"), ("broken", "requestHead")])
        [event] = self.failures()
        self.assertEqual(event["plugin"], "broken")
        self.assertEqual(event["hook"], "requestHead")
        self.assertIn("http://a.test/x", event["subject"])
        self.assertTrue(event["log_failure"].check(Boom))
        self.assertIsNotNone(event["log_failure"].getTracebackObject())
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_errbackHook(self):
        """A hook whose Deferred fails gives a 502 naming the plugin, logged once."""
        waiting = Deferred()
        pipeline = self.pipeline(("a", {"responseHead": lambda flow: waiting}), ("b", {}))
        flow = makeFlow()
        flow.response = makeResponse(200)
        d = pipeline.runResponseHead(flow)
        waiting.errback(Boom("later"))
        error = self.failureResultOf(d, PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "a", "responseHead"))
        self.assertEqual(self.calls, [("a", "responseHead")])
        [event] = self.failures()
        self.assertEqual(event["plugin"], "a")
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedDeferredHook(self):
        """A hook returning an already failed Deferred gives a 502."""
        pipeline = self.pipeline(("a", {"requestHead": lambda flow: fail(Boom())}))
        error = self.failureResultOf(pipeline.runRequestHead(makeFlow()), PluginError).value
        self.assertEqual((error.status, error.plugin), (502, "a"))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_wrongTypeAnswer(self):
        """A hook answering with something outside its contract gives a 502 naming the plugin."""
        pipeline = self.pipeline(("a", {}), ("odd", {"requestHead": 42}), ("c", {}))
        error = self.failureResultOf(pipeline.runRequestHead(makeFlow()), PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "odd", "requestHead"))
        self.assertIn("plugin odd returned int from requestHead", str(error))
        self.assertEqual([c[0] for c in self.calls], ["a", "odd"])
        [event] = self.errors()
        self.assertEqual(event["plugin"], "odd")

    def test_wrongTypeFromDeferred(self):
        """A Deferred firing with a wrong answer gives a 502 too."""
        waiting = Deferred()
        pipeline = self.pipeline(("odd", {"responseHead": lambda flow: waiting}), ("c", {}))
        flow = makeFlow()
        flow.response = makeResponse(200)
        d = pipeline.runResponseHead(flow)
        waiting.callback("text")
        error = self.failureResultOf(d, PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "odd", "responseHead"))
        self.assertEqual([c[0] for c in self.calls], ["odd"])

    def test_pluginErrorPassedThrough(self):
        """A PluginError from a hook's Deferred is kept as it is, not wrapped or logged."""
        original = PluginError(504, "inner", "requestHead", "inner timed out")
        pipeline = self.pipeline(("outer", {"requestHead": lambda flow: fail(original)}))
        error = self.failureResultOf(pipeline.runRequestHead(makeFlow()), PluginError).value
        self.assertIs(error, original)
        self.assertEqual(self.failures(), [])

    def test_cancel(self):
        """
        Cancelling a run cancels the hook's pending Deferred; the run fails
        with CancelledError, nothing is logged, and no timeout comes later.
        """
        cancelled = []
        waiting = Deferred(cancelled.append)
        pipeline = self.pipeline(("slow", {"requestHead": lambda flow: waiting}), ("c", {}))
        d = pipeline.runRequestHead(makeFlow())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [waiting])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(TIMEOUT * 10)
        self.assertEqual(list(self.events), [])
        self.assertEqual(self.calls, [("slow", "requestHead")])

    def test_pluginErrorFields(self):
        """PluginError keeps status, plugin and hook; its text is the reason."""
        error = PluginError(502, "p#2", "responseBody", "plugin p#2 failed")
        self.assertEqual((error.status, error.plugin, error.hook, error.reason), (502, "p#2", "responseBody", "plugin p#2 failed"))
        self.assertEqual(str(error), "plugin p#2 failed")


class ShortCircuitTests(PipelineTestCase):
    def test_requestHeadResponseStops(self):
        """A Response from requestHead is the plan's response; later request hooks are skipped."""
        answer = Response.text(403, "no")
        pipeline = self.pipeline(("a", {}), ("block", {"requestHead": answer}), ("c", {}))
        flow = makeFlow()
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        self.assertIs(plan.response, answer)
        self.assertIs(flow.response, answer)
        self.assertEqual([c[0] for c in self.calls], ["a", "block"])

    def test_madeResponseBodyComplete(self):
        """A Response a hook made without a body gets an empty one."""
        answer = Response(204)
        pipeline = self.pipeline(("a", {"requestHead": answer}))
        self.successResultOf(pipeline.runRequestHead(makeFlow()))
        self.assertEqual(answer.body, b"")

    def test_madeResponseSeenByEveryResponseHook(self):
        """runMadeResponse runs every response hook, including the answering plugin's and earlier ones."""
        answer = Response.text(403, "no")
        seen = []
        pipeline = self.pipeline(
            ("a", {"responseHead": lambda flow: seen.append(flow.response)}),
            ("block", {"requestHead": answer}),
            ("c", {}),
        )
        flow = makeFlow()
        self.successResultOf(pipeline.runRequestHead(flow))
        del self.calls[:]
        self.assertIsNone(self.successResultOf(pipeline.runMadeResponse(flow)))
        self.assertEqual(self.calls, [("a", "responseHead"), ("block", "responseHead"), ("c", "responseHead")])
        self.assertEqual(seen, [answer])

    def test_madeResponseBodyReaders(self):
        """A response hook asking for a made response's body gets it whole, at once."""
        answer = Response.make(200, b"made")
        pipeline = self.pipeline(
            ("r", {"responseHead": READ_BODY, "responseBody": lambda flow, body: body + b"!"}),
        )
        flow = makeFlow()
        flow.response = answer
        self.successResultOf(pipeline.runMadeResponse(flow))
        self.assertEqual(self.calls, [("r", "responseHead"), ("r", "responseBody")])
        self.assertEqual(flow.response.body, b"made!")

    def test_readersInOrder(self):
        """READ_BODY answers become readers, in stage order."""
        pipeline = self.pipeline(("a", {"requestHead": READ_BODY}), ("b", {}), ("c", {"requestHead": READ_BODY}))
        plan = self.successResultOf(pipeline.runRequestHead(makeFlow(method=b"POST", body=b"x")))
        self.assertEqual([s.label for s in plan.readers], ["a", "c"])
        self.assertEqual(plan.filters, [])

    def test_stepsKeepStageOrder(self):
        """Filters and readers share plan.steps in stage order; .filters and .readers split them."""
        first, second = Tagger(self.calls, "f1"), Tagger(self.calls, "f2")
        pipeline = self.pipeline(
            ("a", {"requestHead": first}),
            ("b", {"requestHead": READ_BODY}),
            ("c", {"requestHead": second}),
        )
        plan = self.successResultOf(pipeline.runRequestHead(makeFlow(method=b"POST", body=b"x")))
        self.assertEqual([(s.label, how) for s, how in plan.steps], [("a", first), ("b", READ_BODY), ("c", second)])
        self.assertEqual([(s.label, f) for s, f in plan.filters], [("a", first), ("c", second)])
        self.assertEqual([s.label for s in plan.readers], ["b"])

    def test_planDefaults(self):
        """An empty Plan has no response and no steps."""
        plan = Plan()
        self.assertIsNone(plan.response)
        self.assertEqual((list(plan.steps), plan.readers, plan.filters), ([], [], []))


class BodyTests(PipelineTestCase):
    def test_requestBodyChain(self):
        """Each requestBody sees the body the previous one returned; None keeps it."""
        seen = []
        pipeline = self.pipeline(
            ("a", {"requestHead": READ_BODY, "requestBody": lambda flow, body: body + b"+a"}),
            ("b", {"requestHead": READ_BODY, "requestBody": lambda flow, body: seen.append(body)}),
            ("c", {"requestHead": READ_BODY, "requestBody": lambda flow, body: body + b"+c"}),
        )
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        result = self.successResultOf(pipeline.runRequestBody(flow, b"body", plan))
        self.assertIsNone(result.response)
        self.assertEqual(seen, [b"body+a"])
        self.assertEqual(flow.request.body, b"body+a+c")

    def test_requestBodyWithFilter(self):
        """A filter step in a buffered request body runs over the whole body, in order."""
        pipeline = self.pipeline(
            ("a", {"requestHead": READ_BODY, "requestBody": lambda flow, body: body + b"+a"}),
            ("f", {"requestHead": Tagger(self.calls, "tag")}),
            ("c", {"requestHead": READ_BODY, "requestBody": lambda flow, body: body + b"+c"}),
        )
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        self.successResultOf(pipeline.runRequestBody(flow, b"x", plan))
        self.assertEqual(flow.request.body, b"[x+a]<end>+c")

    def test_requestBodyResponseShortCircuits(self):
        """A Response from requestBody stops the later readers and is the plan's response."""
        answer = Response.make(413, b"too much")
        pipeline = self.pipeline(
            ("a", {"requestHead": READ_BODY, "requestBody": answer}),
            ("b", {"requestHead": READ_BODY, "requestBody": b"never"}),
        )
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        del self.calls[:]
        result = self.successResultOf(pipeline.runRequestBody(flow, b"body", plan))
        self.assertIs(result.response, answer)
        self.assertIs(flow.response, answer)
        self.assertEqual(self.calls, [("a", "requestBody")])
        self.assertEqual(flow.request.body, b"body")

    def test_requestBodyWrongType(self):
        """requestBody answering something other than None, bytes or a Response gives a 502."""
        pipeline = self.pipeline(("a", {"requestHead": READ_BODY, "requestBody": "text"}))
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        error = self.failureResultOf(pipeline.runRequestBody(flow, b"b", plan), PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "a", "requestBody"))

    def test_requestBodyRaising(self):
        """requestBody raising gives a 502 naming the plugin and requestBody, logged once."""
        pipeline = self.pipeline(("a", {"requestHead": READ_BODY, "requestBody": _raise}))
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        error = self.failureResultOf(pipeline.runRequestBody(flow, b"b", plan), PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "a", "requestBody"))
        self.assertEqual(len(self.failures()), 1)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_requestBodyDeferred(self):
        """A requestBody Deferred holds the chain until it fires."""
        waiting = Deferred()
        pipeline = self.pipeline(
            ("a", {"requestHead": READ_BODY, "requestBody": lambda flow, body: waiting}),
            ("b", {"requestHead": READ_BODY, "requestBody": lambda flow, body: body + b"+b"}),
        )
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        d = pipeline.runRequestBody(flow, b"x", plan)
        self.assertNoResult(d)
        waiting.callback(b"y")
        self.successResultOf(d)
        self.assertEqual(flow.request.body, b"y+b")

    def test_responseHeadReplacement(self):
        """
        A Response from responseHead replaces flow.response and later hooks
        see the replacement; what every stage asked of the body still
        applies, to the replacement's body.
        """
        replacement = Response.make(503, b"sorry")
        seen = []

        def later(flow):
            seen.append(flow.response)
            return READ_BODY

        pipeline = self.pipeline(
            ("a", {"responseHead": READ_BODY}),
            ("swap", {"responseHead": replacement}),
            ("c", {"responseHead": later}),
        )
        flow = makeFlow()
        flow.response = makeResponse(200)
        plan = self.successResultOf(pipeline.runResponseHead(flow))
        self.assertIs(plan.response, replacement)
        self.assertIs(flow.response, replacement)
        self.assertEqual(seen, [replacement])
        self.assertEqual([(s.label, how) for s, how in plan.steps], [("a", READ_BODY), ("c", READ_BODY)])

    def test_responseHeadReplacementBodySteps(self):
        """The body steps asked for before and after a replacement run over the replacement's body."""
        replacement = Response.make(503, b"sorry")
        pipeline = self.pipeline(
            ("a", {"responseHead": READ_BODY, "responseBody": lambda flow, body: body + b"+a"}),
            ("swap", {"responseHead": replacement}),
            ("c", {"responseHead": READ_BODY, "responseBody": lambda flow, body: body + b"+c"}),
        )
        flow = makeFlow()
        flow.response = makeResponse(200)
        plan = self.successResultOf(pipeline.runResponseHead(flow))
        self.successResultOf(pipeline.runResponseBody(flow, plan.response.body, plan))
        self.assertIs(flow.response, replacement)
        self.assertEqual(replacement.body, b"sorry+a+c")

    def test_responseBodyReplacementSeenLater(self):
        """A Response from responseBody replaces flow.response and later readers get its body."""
        replacement = Response.make(200, b"new")
        seen = []
        pipeline = self.pipeline(
            ("a", {"responseHead": READ_BODY, "responseBody": replacement}),
            ("b", {"responseHead": READ_BODY, "responseBody": lambda flow, body: seen.append(body)}),
        )
        flow = makeFlow()
        flow.response = makeResponse(200)
        plan = self.successResultOf(pipeline.runResponseHead(flow))
        self.assertIsNone(self.successResultOf(pipeline.runResponseBody(flow, b"old", plan)))
        self.assertIs(flow.response, replacement)
        self.assertEqual(seen, [b"new"])

    def test_responseBodyBytesChain(self):
        """responseBody bytes answers chain; the result is flow.response.body."""
        pipeline = self.pipeline(
            ("a", {"responseHead": READ_BODY, "responseBody": lambda flow, body: body.upper()}),
            ("b", {"responseHead": READ_BODY, "responseBody": lambda flow, body: body + b"!"}),
        )
        flow = makeFlow()
        flow.response = makeResponse(200)
        plan = self.successResultOf(pipeline.runResponseHead(flow))
        self.successResultOf(pipeline.runResponseBody(flow, b"abc", plan))
        self.assertEqual(flow.response.body, b"ABC!")


class FilterTests(PipelineTestCase):
    def setUp(self):
        PipelineTestCase.setUp(self)
        self.stages = [Stage("hold", Rewriter()), Stage("tag", Rewriter())]
        self.holder = Holder(self.calls)
        self.tagger = Tagger(self.calls)
        self.filters = [(self.stages[0], self.holder), (self.stages[1], self.tagger)]
        self.pipe = self.pipeline()

    def test_chunkThroughEachFilter(self):
        """A chunk goes through each filter in turn."""
        filters = [(self.stages[1], self.tagger), (self.stages[1], Tagger(self.calls, "second"))]
        self.assertEqual(self.pipe.filterChunk(filters, b"ab", makeFlow()), b"[[ab]]")
        self.assertEqual(self.calls, [("tagger", "filterChunk", b"ab"), ("second", "filterChunk", b"[ab]")])

    def test_heldBytesThroughLaterFilters(self):
        """What the first filter releases at its end goes through the later filter's filterChunk."""
        flow = makeFlow()
        self.assertEqual(self.pipe.filterChunk(self.filters, b"ab", flow), b"")
        self.assertEqual(self.pipe.filterChunk(self.filters, b"cd", flow), b"")
        self.assertEqual(self.pipe.filterEnd(self.filters, flow), b"[ABCD]<end>")
        # The second filter may also be handed the first one's empty output.
        self.assertEqual(
            [call for call in self.calls if call[-1] != b""],
            [
                ("holder", "filterChunk", b"ab"),
                ("holder", "filterChunk", b"cd"),
                ("holder", "filterEnd"),
                ("tagger", "filterChunk", b"ABCD"),
                ("tagger", "filterEnd"),
            ],
        )

    def test_filterWhole(self):
        """filterWhole runs the chunk then the end of every filter."""
        self.assertEqual(self.pipe.filterWhole(self.filters, b"xy", makeFlow()), b"[XY]<end>")

    def test_filterWholeEmpty(self):
        """An empty body only ends the filters."""
        self.assertEqual(self.pipe.filterWhole([(self.stages[1], self.tagger)], b"", makeFlow()), b"<end>")
        self.assertEqual(self.calls, [("tagger", "filterEnd")])

    def test_filterRaising(self):
        """A filter that raises gives a 502 naming its plugin, logged once."""
        broken = BodyFilter()
        broken.filterChunk = _raise
        error = self.assertRaises(
            PluginError, self.pipe.filterChunk, [(self.stages[1], broken)], b"x", makeFlow()
        )
        self.assertEqual((error.status, error.plugin, error.hook), (502, "tag", "filterChunk"))
        [event] = self.failures()
        self.assertEqual(event["plugin"], "tag")
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_filterEndRaising(self):
        """A filterEnd that raises gives a 502 for filterEnd."""
        broken = BodyFilter()
        broken.filterEnd = _raise
        error = self.assertRaises(PluginError, self.pipe.filterEnd, [(self.stages[0], broken)], makeFlow())
        self.assertEqual((error.status, error.plugin, error.hook), (502, "hold", "filterEnd"))
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_filterWrongType(self):
        """A filter returning something other than bytes gives a 502."""
        odd = BodyFilter()
        odd.filterChunk = lambda data: data.decode("ascii")
        error = self.assertRaises(PluginError, self.pipe.filterChunk, [(self.stages[0], odd)], b"x", makeFlow())
        self.assertEqual((error.status, error.plugin, error.hook), (502, "hold", "filterChunk"))

    def test_filterRaisingInBodyRun(self):
        """A filter raising while a buffered body runs through the steps fails that run with a 502."""
        broken = BodyFilter()
        broken.filterChunk = _raise
        pipeline = self.pipeline(
            ("f", {"requestHead": broken}),
            ("r", {"requestHead": READ_BODY, "requestBody": b"never"}),
        )
        flow = makeFlow(method=b"POST")
        plan = self.successResultOf(pipeline.runRequestHead(flow))
        error = self.failureResultOf(pipeline.runRequestBody(flow, b"x", plan), PluginError).value
        self.assertEqual((error.status, error.plugin), (502, "f"))
        self.assertNotIn(("r", "requestBody"), self.calls)
        self.assertEqual(len(self.failures()), 1)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


class ConnectTests(PipelineTestCase):
    target = ConnectTarget("a.test", 443)

    def test_firstAnswerWins(self):
        """The first policy answer that is not None wins; later policies are not asked."""
        pipeline = self.pipeline(
            ("a", {"connectDecision": None}),
            ("b", {"connectDecision": TUNNEL}),
            ("c", {"connectDecision": INTERCEPT}),
        )
        self.assertEqual(self.successResultOf(pipeline.runConnect(self.target)), TUNNEL)
        self.assertEqual([c[0] for c in self.calls], ["a", "b"])

    def test_answersPassThrough(self):
        """INTERCEPT, TUNNEL and Deny come back as given."""
        deny = Deny(451, "no")
        for answer in (INTERCEPT, TUNNEL, deny):
            pipeline = self.pipeline(("a", {"connectDecision": answer}))
            self.assertIs(self.successResultOf(pipeline.runConnect(self.target)), answer)

    def test_noOpinion(self):
        """When every policy says None, the decision is None."""
        pipeline = self.pipeline(("a", {}), ("b", {}))
        self.assertIsNone(self.successResultOf(pipeline.runConnect(self.target)))
        self.assertEqual(len(self.calls), 2)

    def test_noPolicies(self):
        """Without connect policies the decision is None at once."""
        pipeline = self.pipeline(RequestRewriterNamed("r"))
        self.assertIsNone(self.successResultOf(pipeline.runConnect(self.target)))

    def test_badAnswer(self):
        """An answer outside the contract gives a 502 naming the plugin and connectDecision."""
        pipeline = self.pipeline(("a", {}), ("odd", {"connectDecision": "allow"}), ("c", {}))
        error = self.failureResultOf(pipeline.runConnect(self.target), PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (502, "odd", "connectDecision"))
        self.assertEqual([c[0] for c in self.calls], ["a", "odd"])

    def test_deferredDecision(self):
        """A policy's Deferred is waited for, and times out with a 504."""
        waiting = Deferred()
        pipeline = self.pipeline(("a", {"connectDecision": lambda target: waiting}), ("b", {}))
        d = pipeline.runConnect(self.target)
        self.assertNoResult(d)
        waiting.callback(Deny())
        self.assertEqual(self.successResultOf(d), Deny())

        pipeline = self.pipeline(("slow", {"connectDecision": lambda target: Deferred()}))
        d = pipeline.runConnect(self.target)
        self.clock.advance(TIMEOUT)
        error = self.failureResultOf(d, PluginError).value
        self.assertEqual((error.status, error.plugin, error.hook), (504, "slow", "connectDecision"))
        self.assertIn("CONNECT a.test:443", self.errors()[-1]["subject"])


class InterfaceTests(SynchronousTestCase):
    def test_baseClassesProvideInterfaces(self):
        """The no-op base classes provide the interfaces they claim."""
        self.assertTrue(verifyObject(IRequestRewriter, RequestRewriter()))
        self.assertTrue(verifyObject(IResponseRewriter, ResponseRewriter()))
        self.assertTrue(verifyObject(IRequestRewriter, Rewriter()))
        self.assertTrue(verifyObject(IResponseRewriter, Rewriter()))
        self.assertTrue(verifyObject(IConnectPolicy, ConnectPolicy()))
        self.assertTrue(verifyObject(IBodyFilter, BodyFilter()))

    def test_baseClassesNoOps(self):
        """The base hooks have no opinion and the base filter passes bytes through."""
        flow = makeFlow()
        self.assertIsNone(Rewriter().requestHead(flow))
        self.assertIsNone(Rewriter().requestBody(flow, b"x"))
        self.assertIsNone(Rewriter().responseHead(flow))
        self.assertIsNone(Rewriter().responseBody(flow, b"x"))
        self.assertIsNone(ConnectPolicy().connectDecision(ConnectTarget("a.test", 443)))
        self.assertEqual(BodyFilter().filterChunk(b"abc"), b"abc")
        self.assertEqual(BodyFilter().filterEnd(), b"")
        self.assertTrue(BodyFilter.keepsLength)

    def test_denyDefaults(self):
        """A Deny is 403 'denied by policy' by default."""
        deny = Deny()
        self.assertEqual((deny.status, deny.reason), (403, "denied by policy"))

    def test_denyStatusRange(self):
        """A Deny takes 4xx and 5xx statuses only."""
        self.assertEqual(Deny(400).status, 400)
        self.assertEqual(Deny("599").status, 599)
        for status in (200, 302, 399, 600, 0):
            self.assertRaises(ValueError, Deny, status)

    def test_denyEquality(self):
        """Denials with the same status and reason are equal and hash alike."""
        self.assertEqual(Deny(451, "law"), Deny(451, "law"))
        self.assertNotEqual(Deny(451, "law"), Deny(403, "law"))
        self.assertNotEqual(Deny(), "tunnel")
        self.assertEqual(len({Deny(451, "law"), Deny(451, "law")}), 1)

    def test_readBodyRepr(self):
        """READ_BODY says its name."""
        self.assertEqual(repr(READ_BODY), "READ_BODY")
