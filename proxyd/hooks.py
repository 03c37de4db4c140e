# -*- test-case-name: tests.unit.test_pipeline -*-
"""
Running one round of plugin hooks: in order, a plain loop while hooks
answer at once, Deferreds (bounded by --plugin-timeout) from the first hook
that returns one; a failure logged once with its traceback and turned into
a L{PluginError} the exchange answers with (502, or 504 for a hook that
never answered).  What the answers mean is L{proxyd.pipeline}'s business.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure


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


class HookRunner:
    """Runs rounds of hooks with one clock and one time limit."""

    _log = Logger()

    metrics = None  # proxyd.metrics.ProxyMetrics, set by the factory

    def __init__(self, clock, timeout):
        self.clock = clock
        self.timeout = timeout

    def run(self, items, args, answer, subject, hookName, start=0):
        """
        Each C{fn(*args)} of C{items}, pairs of (stage, fn), in order from
        C{start}; C{answer(stage, value)} is asked about every value other
        than None (no opinion) and returns True to stop.

        @return: None when every hook answered at once, else a Deferred
            firing with None or failing with L{PluginError}.
        @raise PluginError: a hook failed synchronously (logged here).
        """
        for index in range(start, len(items)):
            stage, fn = items[index]
            try:
                value = fn(*args)
            except PluginError:
                raise
            except Exception:
                raise self.hookFailed(Failure(), stage.label, hookName, subject)
            if value is None:
                continue
            if isDeferred(value):
                return self._wait(items, args, answer, subject, hookName, index, value)
            if answer(stage, value):
                return None
        return None

    def hookFailed(self, failure, plugin, hookName, subject):
        """Log a hook's failure once; the L{PluginError} to answer with."""
        if self.metrics is not None:
            self.metrics.pluginFailed(plugin)
        self._log.failure(
            "Plugin {plugin} failed in {hook} for {subject}",
            failure,
            plugin=plugin,
            hook=hookName,
            subject=describe(subject),
        )
        return PluginError(
            502, plugin, hookName,
            "plugin {} failed in {}: {} (traceback in the proxyd log)".format(plugin, hookName, failure.type.__name__),
        )

    def _wait(self, items, args, answer, subject, hookName, index, pending):
        """
        The hook of C{items[index]} returned C{pending}: wait for it (within
        the time limit), then L{run} the rest.  Cancelling the Deferred
        returned cancels what is being waited for, quietly.
        """
        stage = items[index][0]
        plugin = stage.label
        waiting = [pending]
        cancelled = []

        def cancel(d):
            cancelled.append(True)
            waiting[0].cancel()

        done = Deferred(canceller=cancel)

        def answered(value):
            if cancelled:
                return
            try:
                if value is not None and answer(stage, value):
                    done.callback(None)
                    return
                rest = self.run(items, args, answer, subject, hookName, index + 1)
            except PluginError as e:
                done.errback(e)
                return
            if rest is None:
                done.callback(None)
            else:
                waiting[0] = rest
                rest.addCallbacks(done.callback, lambda f: None if cancelled else done.errback(f))

        def failed(failure):
            if cancelled:
                return
            if failure.check(PluginError):
                done.errback(failure)
            elif failure.check(_TimedOut):
                if self.metrics is not None:
                    self.metrics.pluginFailed(plugin)
                self._log.warn(
                    "Plugin {plugin} did not answer {hook} within {t:g}s for {subject}",
                    plugin=plugin,
                    hook=hookName,
                    t=self.timeout,
                    subject=describe(subject),
                )
                done.errback(PluginError(
                    504, plugin, hookName,
                    "plugin {} did not answer {} within {:g}s".format(plugin, hookName, self.timeout),
                ))
            else:
                done.errback(self.hookFailed(failure, plugin, hookName, subject))

        if not pending.called:
            pending.addTimeout(self.timeout, self.clock, _timedOut)
        pending.addCallbacks(answered, failed)
        return done


# Deferred is an abc (Awaitable), so isinstance() on it is slow; hooks'
# answers come from a handful of classes, each looked at once.
_deferredClasses = {type(None): False}


def isDeferred(value):
    """C{isinstance(value, Deferred)}, fast on the hot path."""
    cls = type(value)
    known = _deferredClasses.get(cls)
    if known is None:
        known = isinstance(value, Deferred)
        if len(_deferredClasses) < 1000:
            _deferredClasses[cls] = known
    return known


def then(result, f):
    """C{f(result)} now, or once the Deferred C{result} fires."""
    if isDeferred(result):
        return result.addCallback(f)
    return f(result)


def _timedOut(result, timeout):
    if hasattr(result, "check") and result.check(CancelledError):
        raise _TimedOut()
    return result


def describe(subject):
    request = getattr(subject, "request", None)
    if request is not None:
        return "{} {}".format(request.method.decode("latin-1"), request.url.decode("latin-1"))
    host = getattr(subject, "host", None)
    if host is not None:
        return "CONNECT {}:{}".format(host, subject.port)
    return repr(subject)
