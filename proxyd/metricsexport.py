# -*- test-case-name: tests.unit.test_metrics -*-
"""
The outward half of C{--metrics}: L{ProxyMetrics}' plain numbers turned
into Prometheus metric families when scraped (L{Collector}), and the
site that serves them at C{/metrics}, with C{/healthz}, on the
C{--metrics} listener.
"""

from twisted.web.resource import Resource
from twisted.web.server import Site

from proxyd import __version__
from proxyd.metrics import CONNECT_BUCKETS, DURATION_BUCKETS


def _histogram(family, labels, bounds, counts):
    from prometheus_client.utils import floatToGoString

    buckets = []
    total = 0
    for bound, count in zip(bounds, counts):
        total += count
        buckets.append((floatToGoString(bound), total))
    total += counts[len(bounds)]
    buckets.append(("+Inf", total))
    family.add_metric(labels, buckets, counts[-1])


def _labelled(name, documentation, labels, values):
    """A counter family with one series per C{values} key (a tuple of label values)."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class Collector:
    """
    L{ProxyMetrics}' plain numbers as metric families (a
    C{prometheus_client.registry.Collector}: all it needs is C{collect}).
    """

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        info = GaugeMetricFamily("proxyd_build_info", "proxyd's version; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        yield _labelled(
            "proxyd_requests",
            "Requests (and CONNECT tunnels) answered, by proxy mode, method "
            "(standard methods, else OTHER) and status class (none: no response sent).",
            ["mode", "method", "code"],
            m.requests,
        )

        durations = HistogramMetricFamily(
            "proxyd_request_duration_seconds",
            "Time from a request's head to the end of its response, by proxy mode (CONNECT tunnels excluded).",
            labels=["mode"],
        )
        for mode, counts in sorted(m.durations.items()):
            _histogram(durations, [mode], DURATION_BUCKETS, counts)
        yield durations

        connects = HistogramMetricFamily(
            "proxyd_upstream_connect_seconds",
            "Time to open a TCP connection to an upstream, name resolution included, TLS excluded.",
        )
        _histogram(connects, [], CONNECT_BUCKETS, m.connects)
        yield connects

        yield CounterMetricFamily(
            "proxyd_received_bytes",
            "Bytes received from clients (requests, and the client-to-upstream direction of tunnels).",
            value=m.received,
        )
        yield CounterMetricFamily(
            "proxyd_sent_bytes",
            "Bytes sent to clients (responses, and the upstream-to-client direction of tunnels).",
            value=m.sent,
        )
        yield GaugeMetricFamily("proxyd_client_connections", "Client connections open now.", value=m.clientConnections)
        yield CounterMetricFamily("proxyd_tunnels", "CONNECT tunnels established.", value=m.tunnelsOpened)
        yield GaugeMetricFamily("proxyd_tunnels_open", "CONNECT tunnels open now.", value=m.tunnelsOpen)

        yield _labelled(
            "proxyd_tls_handshake_failures",
            "TLS handshakes that failed, with clients (side=client) or upstreams, by reason.",
            ["side", "reason"],
            m.tlsFailures,
        )
        yield _labelled(
            "proxyd_plugin_errors",
            "Plugin hooks that raised, timed out or answered outside their contract, by plugin.",
            ["plugin"],
            {(plugin,): value for plugin, value in m.pluginErrors.items()},
        )

        leaves = m.leaves
        generated = hits = misses = cached = 0
        if leaves is not None:
            generated, hits, misses, cached = leaves.generated, leaves.hits, leaves.misses, leaves.cached
        yield CounterMetricFamily(
            "proxyd_leaf_certificates_generated", "mitm: leaf certificates made.", value=generated
        )
        yield CounterMetricFamily(
            "proxyd_leaf_cache_hits", "mitm: leaf certificates found in the cache.", value=hits
        )
        yield CounterMetricFamily(
            "proxyd_leaf_cache_misses",
            "mitm: asks for a leaf certificate that found none usable in the cache.",
            value=misses,
        )
        yield GaugeMetricFamily("proxyd_leaf_cache_entries", "mitm: leaf certificates cached now.", value=cached)


# Serving

_TEXT = b"text/plain; charset=utf-8"


class MetricsResource(Resource):
    """
    C{GET /metrics}: the Prometheus text format; C{GET /healthz}: C{ok};
    C{HEAD} of either; other paths 404, other methods 405.
    """

    isLeaf = True

    def __init__(self, metrics, health=None):
        """
        @param health: C{health() -> None | str}: None when healthy, else why
            not (C{/healthz} then answers 503 with it, e.g. while draining).
        """
        Resource.__init__(self)
        self.metrics = metrics
        self.health = health

    def render(self, request):
        path = request.path
        if path == b"/metrics":
            page = self._metrics
        elif path == b"/healthz":
            page = self._healthz
        else:
            return self._text(request, 404, b"not found: this listener serves /metrics and /healthz\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return self._text(request, 405, b"method not allowed: use GET\n")
        status, contentType, body = page()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", contentType)
        request.setHeader(b"Cache-Control", b"no-store")
        return self._body(request, body)

    def _metrics(self):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        return 200, CONTENT_TYPE_LATEST.encode("ascii"), generate_latest(self.metrics.registry)

    def _healthz(self):
        why = self.health() if self.health is not None else None
        if why is None:
            return 200, _TEXT, b"ok\n"
        return 503, _TEXT, why.encode("utf-8", "replace") + b"\n"

    def _text(self, request, status, body):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", _TEXT)
        return self._body(request, body)

    def _body(self, request, body):
        if request.method == b"HEAD":
            # Twisted would drop it, but log a warning per request.
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            return b""
        return body


class MetricsSite(Site):
    """A L{Site} that keeps no access log of its own (scrapes every few seconds)."""

    noisy = False

    def log(self, request):
        pass

    def startFactory(self):
        pass  # no log file, nor the once-a-second log timestamp timer

    def stopFactory(self):
        pass


def metricsFactory(metrics, reactor=None, health=None, timeout=60):
    """
    The factory to listen with for C{--metrics ENDPOINT}.

    @param metrics: a L{ProxyMetrics}.
    @param health: see L{MetricsResource}.
    @param timeout: seconds an idle scrape connection is kept.
    """
    return MetricsSite(MetricsResource(metrics, health), timeout=timeout, reactor=reactor)
