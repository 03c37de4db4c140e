# -*- test-case-name: tests.unit.test_metrics -*-
"""
C{--metrics ENDPOINT}: Prometheus metrics at C{/metrics} and a health check
at C{/healthz}, on a listener of their own.

This module is the counting half; L{proxyd.metricsexport} turns the counts
into metric families at scrape time and serves them.

The daemon counts with L{ProxyMetrics} (or L{NullMetrics} without
C{--metrics}, whose methods do nothing, so call sites need no C{if}).  The
hot-path methods only add to plain Python ints, floats and dicts; a custom
collector turns them into metric families when C{/metrics} is scraped.
That is measured (C{timeit}, 2 shared cores, the C{/tmp/rv} venv,
prometheus_client 0.26) at 0.8-1.1 us for a whole L{requestDone} (request
counter, both byte counters, the duration histogram), 0.4-0.6 us for
L{upstreamConnected}, under 0.1 us for a gauge method, 0.1 us for a
L{NullMetrics} call; the same updates through prometheus_client's
C{Counter} and C{Histogram} children, even with their C{.labels()} looked
up once and cached in a dict, cost 4.5-7 us (a lock per update and a
Python loop over the histogram buckets).  A keep-alive forward request
costs proxyd about 170 us of CPU (bench/results), so metrics on cost
under 1% of req/s.  A scrape (C{generate_latest}) takes about 1 ms.

Everything is updated and collected in the reactor thread.

Label values are bounded whatever clients or upstreams send: the method is
one of L{METHODS} or C{OTHER}; the status is a class (C{1xx}..C{5xx}), C{none}
when no response was sent, C{other} for a status outside 100-599; a TLS
failure's reason is one of L{TLS_REASONS}; at most L{MAX_PLUGINS} plugin
labels.
"""

from bisect import bisect_left

# prometheus_client is imported where it is used, so that L{NullMetrics}
# (no --metrics) never needs it.


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

# method (bytes or str, as the request head has it) -> label
_METHODS = {}
for _m in METHODS:
    _METHODS[_m] = _METHODS[_m.encode("ascii")] = _m

# status -> label; L{None} and 0 mean no response was sent.
_CODES = {status: "%dxx" % (status // 100,) for status in range(100, 600)}
_CODES[None] = _CODES[0] = "none"

# Seconds.  Requests include downloads and slow origins, so the buckets go
# past Prometheus' default 10 s; connects stop at the default
# --connect-timeout, 10 s.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SIDES = ("client", "upstream")

# A TLS failure's reason: the first whose phrases occur in the (lower-cased)
# OpenSSL or proxyd text; "other" when none does.
_REASON_PHRASES = (
    ("timeout", ("timed out", "timeout", "not done after")),
    ("http_request_to_tls_port", ("http request", "https proxy request")),
    (
        "unknown_ca",
        (
            "unknown ca",
            "unknown issuer",
            "unable to get local issuer",
            "unable to get issuer",
            "self-signed",
            "self signed",
            "unable to verify the first certificate",
        ),
    ),
    (
        "protocol_version",
        (
            "protocol version",
            "unsupported protocol",
            "version too low",
            "wrong version number",
            "no protocols available",
            "unknown protocol",
            "inappropriate fallback",
        ),
    ),
    (
        "no_shared_cipher",
        (
            "no shared cipher",
            "no ciphers available",
            "no cipher",
            "no suitable signature",
            "no shared signature",
            "no shared group",
            "no suitable key share",
            "alert handshake failure",
        ),
    ),
    (
        "certificate",
        (
            "certificate",
            "name mismatch",
            "verify failed",
            "expired",
            "not yet valid",
            "revoked",
        ),
    ),
    (
        "eof",
        (
            "eof",
            "closed",
            "connection lost",
            "connection reset",
            "connection done",
            "shutdown while in init",
        ),
    ),
)
TLS_REASONS = tuple(reason for reason, _ in _REASON_PHRASES) + ("other",)

MAX_PLUGINS = 100  # distinct plugin labels; more are counted as "other"
_REASON_CACHE_SIZE = 256


def tlsReason(reason):
    """
    The C{reason} label for a TLS handshake failure: one of L{TLS_REASONS}.

    @param reason: what went wrong: the text of L{proxyd.tlsconfig.sslReason}
        or L{proxyd.tlsconfig.describeTLSFailure}, an exception (an
        C{OpenSSL.SSL.Error}, a L{proxyd.errors.ProxyError}, ...) or a
        L{twisted.python.failure.Failure} of one.
    """
    text = _reasonText(reason).lower()
    # Names are quoted in proxyd's sentences ('eof.example'): not a reason.
    text = _unquote(text)
    for label, phrases in _REASON_PHRASES:
        for phrase in phrases:
            if phrase in text:
                return label
    return "other"


def _reasonText(reason):
    if isinstance(reason, str):
        return reason
    if isinstance(reason, bytes):
        return reason.decode("latin-1")
    value = getattr(reason, "value", None)  # a Failure
    if isinstance(value, BaseException):
        reason = value
    if isinstance(reason, BaseException):
        why = getattr(reason, "reason", None)  # ProxyError
        if isinstance(why, str):
            return why
        from proxyd.tlsconfig import sslReason

        return sslReason(reason)
    return str(reason)


def _unquote(text):
    out = []
    quote = None
    for c in text:
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        else:
            out.append(c)
    return "".join(out)


class ProxyMetrics:
    """
    proxyd's metrics, in a registry of their own (never the global one, so
    several factories, and tests, do not clash).

    @ivar registry: the L{CollectorRegistry} to expose.
    @ivar enabled: True (False on L{NullMetrics}): whether it is worth
        working out an argument that costs something.
    """

    enabled = True

    def __init__(self, process=True):
        """
        @param process: also expose the C{process_*} metrics (open file
            descriptors, memory, CPU) of this process.
        """
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = {}  # (mode, method, code) -> count
        self.durations = {}  # mode -> bucket counts (not cumulative), then the sum
        self.connects = [0] * (len(CONNECT_BUCKETS) + 1) + [0.0]
        self.received = 0
        self.sent = 0
        self.clientConnections = 0
        self.tunnelsOpened = 0
        self.tunnelsOpen = 0
        self.tlsFailures = {(side, reason): 0 for side in SIDES for reason in TLS_REASONS}
        self.pluginErrors = {}
        self.leaves = None
        self._reasons = {}
        from proxyd.metricsexport import Collector

        self.registry.register(Collector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # Requests

    def requestDone(self, mode, method, status, bytesIn, bytesOut, duration):
        """
        One request (or CONNECT tunnel) is over: logged, in access-log terms.

        @param mode: C{config.mode}: C{"forward"}, C{"mitm"} or C{"reverse"}.
        @param method: the request's method, bytes or str (any: bucketed).
        @param status: the status sent to the client; 0 or None if none was.
        @param bytesIn: bytes received from the client for it.
        @param bytesOut: bytes sent to the client for it.
        @param duration: seconds from its head to its end.  Not observed
            for C{CONNECT}: a tunnel's lifetime is not a request duration
            (its setup is in C{proxyd_upstream_connect_seconds}).
        """
        method = _METHODS.get(method, "OTHER")
        key = (mode, method, _CODES.get(status, "other"))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.received += bytesIn
        self.sent += bytesOut
        if method != "CONNECT":
            counts = self.durations.get(mode)
            if counts is None:
                counts = self.durations[mode] = [0] * (len(DURATION_BUCKETS) + 1) + [0.0]
            if duration < 0.0:
                duration = 0.0  # the wall clock stepped back
            counts[bisect_left(DURATION_BUCKETS, duration)] += 1
            counts[-1] += duration

    def upstreamConnected(self, seconds):
        """An upstream TCP connection is up, C{seconds} after it was asked for (resolving included)."""
        if seconds < 0.0:
            seconds = 0.0
        counts = self.connects
        counts[bisect_left(CONNECT_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    # Connections and tunnels

    def connectionOpened(self):
        """A client connection was accepted (not one refused over --max-connections)."""
        self.clientConnections += 1

    def connectionClosed(self):
        """A client connection counted by L{connectionOpened} is gone."""
        self.clientConnections -= 1

    def tunnelOpened(self):
        """A CONNECT tunnel is established (the 200 was sent)."""
        self.tunnelsOpened += 1
        self.tunnelsOpen += 1

    def tunnelClosed(self):
        """A tunnel counted by L{tunnelOpened} is over."""
        self.tunnelsOpen -= 1

    # Failures

    def handshakeFailed(self, side, reason):
        """
        A TLS handshake failed.

        @param side: C{"client"} (proxyd was the server) or C{"upstream"}.
        @param reason: see L{tlsReason}: text, exception or Failure.
        @raise ValueError: C{side} is neither.
        """
        if side not in SIDES:
            raise ValueError("side must be 'client' or 'upstream', not {!r}".format(side))
        reasons = self._reasons
        key = reason if isinstance(reason, str) else None
        label = reasons.get(key) if key is not None else None
        if label is None:
            label = tlsReason(reason)
            if key is not None:
                if len(reasons) >= _REASON_CACHE_SIZE:
                    reasons.clear()
                reasons[key] = label
        self.tlsFailures[side, label] += 1

    def pluginFailed(self, plugin):
        """
        A plugin's hook raised, timed out or answered outside its contract.

        @param plugin: the plugin's label (L{proxyd.pipeline.Stage.label}).
        """
        errors = self.pluginErrors
        plugin = str(plugin)
        if plugin not in errors and len(errors) >= MAX_PLUGINS:
            plugin = "other"
        errors[plugin] = errors.get(plugin, 0) + 1

    # Read at scrape time

    def trackLeaves(self, leaves):
        """
        Expose a L{proxyd.ca.LeafFactory}'s own counters (C{generated},
        C{hits}, C{misses}, C{cached}), read when scraped.
        """
        self.leaves = leaves


class NullMetrics:
    """L{ProxyMetrics}' methods, doing nothing: without --metrics."""

    enabled = False
    registry = None

    def requestDone(self, mode, method, status, bytesIn, bytesOut, duration):
        pass

    def upstreamConnected(self, seconds):
        pass

    def connectionOpened(self):
        pass

    def connectionClosed(self):
        pass

    def tunnelOpened(self):
        pass

    def tunnelClosed(self):
        pass

    def handshakeFailed(self, side, reason):
        pass

    def pluginFailed(self, plugin):
        pass

    def trackLeaves(self, leaves):
        pass
