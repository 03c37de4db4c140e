"""
Tests for L{proxyd.metrics}: the counters move, label values stay bounded,
the exposition parses, and the web resource answers as Prometheus and a
health checker expect.  No sockets.
"""

import inspect
import random
import time

from OpenSSL import SSL
from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from proxyd.ca import CertificateAuthority, LeafFactory
from proxyd.errors import ProxyError
from proxyd.metrics import (
    CONNECT_BUCKETS,
    DURATION_BUCKETS,
    MAX_PLUGINS,
    TLS_REASONS,
    NullMetrics,
    ProxyMetrics,
    tlsReason,
)
from proxyd.metricsexport import metricsFactory


def scrape(metrics):
    """{family name: family} of what C{/metrics} would show."""
    text = generate_latest(metrics.registry).decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(metrics, sampleName, **labels):
    """{labels: value} of the samples called C{sampleName} whose labels include C{labels}."""
    found = {}
    for family in scrape(metrics).values():
        for sample in family.samples:
            if sample.name == sampleName and all(sample.labels.get(k) == v for k, v in labels.items()):
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(metrics, sampleName, **labels):
    """The one sample called C{sampleName} with exactly C{labels}; 0 if absent."""
    key = tuple(sorted(labels.items()))
    return samples(metrics, sampleName).get(key, 0)


class RequestTests(SynchronousTestCase):
    def setUp(self):
        self.metrics = ProxyMetrics(process=False)

    def test_countedByModeMethodAndClass(self):
        m = self.metrics
        m.requestDone("forward", b"GET", 200, 100, 1000, 0.01)
        m.requestDone("forward", b"GET", 204, 100, 1000, 0.01)
        m.requestDone("forward", "POST", 503, 10, 20, 0.01)
        m.requestDone("mitm", b"GET", 404, 1, 2, 0.01)
        self.assertEqual(value(m, "proxyd_requests_total", mode="forward", method="GET", code="2xx"), 2)
        self.assertEqual(value(m, "proxyd_requests_total", mode="forward", method="POST", code="5xx"), 1)
        self.assertEqual(value(m, "proxyd_requests_total", mode="mitm", method="GET", code="4xx"), 1)
        self.assertEqual(len(samples(m, "proxyd_requests_total")), 3)

    def test_statusClasses(self):
        m = self.metrics
        for status in (100, 101, 199, 200, 299, 301, 404, 418, 500, 599):
            m.requestDone("forward", b"GET", status, 0, 0, 0.0)
        codes = {dict(k)["code"]: v for k, v in samples(m, "proxyd_requests_total").items()}
        self.assertEqual(codes, {"1xx": 3, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 2})

    def test_noResponseAndOddStatus(self):
        """No status at all is "none"; one outside 100-599 (a hostile upstream) is "other"."""
        m = self.metrics
        m.requestDone("forward", b"GET", None, 5, 0, 0.0)
        m.requestDone("forward", b"GET", 0, 5, 0, 0.0)
        for status in (99, 600, 999, -1, 10**6):
            m.requestDone("forward", b"GET", status, 0, 0, 0.0)
        codes = {dict(k)["code"]: v for k, v in samples(m, "proxyd_requests_total").items()}
        self.assertEqual(codes, {"none": 2, "other": 5})

    def test_standardMethods(self):
        m = self.metrics
        methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        for method in methods:
            m.requestDone("forward", method.encode("ascii"), 200, 0, 0, 0.0)
        seen = sorted(dict(k)["method"] for k in samples(m, "proxyd_requests_total"))
        self.assertEqual(seen, sorted(methods))

    def test_hostileMethodsAreOneSeries(self):
        """1000 made-up methods (and lower-case ones) all count as OTHER."""
        m = self.metrics
        rng = random.Random(7)
        for i in range(1000):
            method = bytes(rng.randrange(33, 127) for _ in range(rng.randrange(1, 20)))
            if method.upper() in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"):
                method = b"X" + method
            m.requestDone("forward", method, 200, 0, 0, 0.0)
        m.requestDone("forward", b"get", 200, 0, 0, 0.0)
        self.assertEqual(
            samples(m, "proxyd_requests_total"),
            {(("code", "2xx"), ("method", "OTHER"), ("mode", "forward")): 1001},
        )

    def test_bytes(self):
        m = self.metrics
        m.requestDone("forward", b"GET", 200, 120, 4000, 0.1)
        m.requestDone("forward", b"CONNECT", 200, 5000, 70000, 30.0)
        self.assertEqual(value(m, "proxyd_received_bytes_total"), 5120)
        self.assertEqual(value(m, "proxyd_sent_bytes_total"), 74000)
        families = scrape(m)
        self.assertIn("client", families["proxyd_received_bytes"].documentation)
        self.assertIn("client", families["proxyd_sent_bytes"].documentation)

    def test_durationHistogram(self):
        m = self.metrics
        for duration in (0.001, 0.005, 0.007, 0.3, 2.0, 1000.0):
            m.requestDone("reverse", b"GET", 200, 0, 0, duration)
        buckets = {
            dict(k)["le"]: v
            for k, v in samples(m, "proxyd_request_duration_seconds_bucket", mode="reverse").items()
        }
        self.assertEqual(len(buckets), len(DURATION_BUCKETS) + 1)
        self.assertEqual(buckets["0.005"], 2)  # le: 0.005 is inside its bucket
        self.assertEqual(buckets["0.01"], 3)
        self.assertEqual(buckets["0.5"], 4)
        self.assertEqual(buckets["2.5"], 5)
        self.assertEqual(buckets["60.0"], 5)
        self.assertEqual(buckets["+Inf"], 6)
        self.assertEqual(value(m, "proxyd_request_duration_seconds_count", mode="reverse"), 6)
        self.assertAlmostEqual(
            value(m, "proxyd_request_duration_seconds_sum", mode="reverse"), 0.001 + 0.005 + 0.007 + 0.3 + 2.0 + 1000.0
        )

    def test_bucketsAreCumulativeAndSorted(self):
        m = self.metrics
        rng = random.Random(3)
        for _ in range(500):
            m.requestDone("forward", b"GET", 200, 0, 0, rng.expovariate(2.0))
        family = scrape(m)["proxyd_request_duration_seconds"]
        counts = [s.value for s in family.samples if s.name.endswith("_bucket")]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(counts[-1], 500)

    def test_tunnelsNotInDurations(self):
        """A CONNECT is a request, but its lifetime is not a request duration."""
        m = self.metrics
        m.requestDone("forward", b"CONNECT", 200, 10, 10, 3600.0)
        m.requestDone("forward", "CONNECT", 502, 0, 100, 0.1)
        self.assertEqual(value(m, "proxyd_requests_total", mode="forward", method="CONNECT", code="2xx"), 1)
        self.assertEqual(samples(m, "proxyd_request_duration_seconds_count"), {})

    def test_clockStepBack(self):
        """A negative duration (the wall clock stepped back) counts as 0."""
        m = self.metrics
        m.requestDone("forward", b"GET", 200, 0, 0, -5.0)
        self.assertEqual(value(m, "proxyd_request_duration_seconds_sum", mode="forward"), 0)
        self.assertEqual(value(m, "proxyd_request_duration_seconds_bucket", mode="forward", le="0.005"), 1)

    def test_upstreamConnect(self):
        m = self.metrics
        for seconds in (0.0005, 0.02, 9.0, 12.0, -1.0):
            m.upstreamConnected(seconds)
        self.assertEqual(value(m, "proxyd_upstream_connect_seconds_count"), 5)
        self.assertEqual(value(m, "proxyd_upstream_connect_seconds_bucket", le="0.001"), 2)
        self.assertEqual(value(m, "proxyd_upstream_connect_seconds_bucket", le="0.025"), 3)
        self.assertEqual(value(m, "proxyd_upstream_connect_seconds_bucket", le="10.0"), 4)
        self.assertEqual(value(m, "proxyd_upstream_connect_seconds_bucket", le="+Inf"), 5)
        self.assertAlmostEqual(value(m, "proxyd_upstream_connect_seconds_sum"), 21.0205)
        buckets = samples(m, "proxyd_upstream_connect_seconds_bucket")
        self.assertEqual(len(buckets), len(CONNECT_BUCKETS) + 1)


class GaugeTests(SynchronousTestCase):
    def test_clientConnections(self):
        m = ProxyMetrics(process=False)
        self.assertEqual(value(m, "proxyd_client_connections"), 0)
        m.connectionOpened()
        m.connectionOpened()
        m.connectionOpened()
        m.connectionClosed()
        self.assertEqual(value(m, "proxyd_client_connections"), 2)
        self.assertEqual(scrape(m)["proxyd_client_connections"].type, "gauge")

    def test_tunnels(self):
        m = ProxyMetrics(process=False)
        m.tunnelOpened()
        m.tunnelOpened()
        m.tunnelClosed()
        self.assertEqual(value(m, "proxyd_tunnels_total"), 2)
        self.assertEqual(value(m, "proxyd_tunnels_open"), 1)
        families = scrape(m)
        self.assertEqual(families["proxyd_tunnels"].type, "counter")
        self.assertEqual(families["proxyd_tunnels_open"].type, "gauge")


# (text as sslReason or describeTLSFailure give it, or the call site's word) -> reason label
REASONS = {
    "tlsv1 alert unknown ca": "unknown_ca",
    "sslv3 alert bad certificate": "certificate",
    "sslv3 alert certificate unknown": "certificate",
    "tlsv13 alert certificate required": "certificate",
    "peer did not return a certificate": "certificate",
    "certificate verify failed": "certificate",
    "upstream certificate for 'expired.badssl.com' rejected: certificate has expired": "certificate",
    "upstream certificate for 'self.example' rejected: self-signed certificate": "unknown_ca",
    "upstream certificate for 'x.example' rejected: unknown issuer (unable to get local issuer certificate)": "unknown_ca",
    "upstream certificate does not match 'wrong.host.example' (name mismatch)": "certificate",
    "tlsv1 alert protocol version": "protocol_version",
    "unsupported protocol": "protocol_version",
    "wrong version number": "protocol_version",
    "no shared cipher": "no_shared_cipher",
    "sslv3 alert handshake failure": "no_shared_cipher",
    "no suitable signature algorithm": "no_shared_cipher",
    "http request": "http_request_to_tls_port",
    "https proxy request": "http_request_to_tls_port",
    "timeout": "timeout",
    "TLS handshake with upstream 'slow.example' not done after 10s": "timeout",
    "User timeout caused connection failure.": "timeout",
    "unexpected eof while reading": "eof",
    "Connection was closed cleanly.": "eof",
    "upstream 'x.example' closed the connection during the TLS handshake": "eof",
    "Connection lost.": "eof",
    "TLS handshake with upstream 'x.example' failed: protocol error": "other",
    "decryption failed or bad record mac": "other",
    "": "other",
    "\x00\xff garbage": "other",
}


class HandshakeTests(SynchronousTestCase):
    def test_reasons(self):
        got = {text: tlsReason(text) for text in REASONS}
        self.assertEqual(got, REASONS)

    def test_quotedNamesAreNotReasons(self):
        """A host name that looks like a reason does not decide it."""
        self.assertEqual(
            tlsReason("TLS handshake with upstream 'eof.timeout.unknown-ca.example' failed: no shared cipher"),
            "no_shared_cipher",
        )
        self.assertEqual(tlsReason("upstream certificate for 'http request' rejected: x"), "certificate")

    def test_exceptionsAndFailures(self):
        sslError = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
        self.assertEqual(tlsReason(sslError), "unknown_ca")
        self.assertEqual(tlsReason(Failure(sslError)), "unknown_ca")
        self.assertEqual(tlsReason(ConnectionDone()), "eof")
        self.assertEqual(tlsReason(Failure(TimeoutError())), "timeout")
        self.assertEqual(tlsReason(ProxyError(502, "upstream certificate for 'a' rejected: certificate has expired")), "certificate")
        self.assertEqual(tlsReason(b"no shared cipher"), "no_shared_cipher")

    def test_counted(self):
        m = ProxyMetrics(process=False)
        m.handshakeFailed("client", "tlsv1 alert unknown ca")
        m.handshakeFailed("client", "tlsv1 alert unknown ca")
        m.handshakeFailed("upstream", Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
        m.handshakeFailed("client", "timeout")
        self.assertEqual(value(m, "proxyd_tls_handshake_failures_total", side="client", reason="unknown_ca"), 2)
        self.assertEqual(value(m, "proxyd_tls_handshake_failures_total", side="upstream", reason="certificate"), 1)
        self.assertEqual(value(m, "proxyd_tls_handshake_failures_total", side="client", reason="timeout"), 1)

    def test_everySeriesFromTheStart(self):
        """Every side and reason shows (as 0) before any failure: rate() works at once."""
        m = ProxyMetrics(process=False)
        found = samples(m, "proxyd_tls_handshake_failures_total")
        self.assertEqual(len(found), 2 * len(TLS_REASONS))
        self.assertEqual(set(found.values()), {0})

    def test_weirdReasonsBounded(self):
        """However many different texts arrive, the series stay the fixed set."""
        m = ProxyMetrics(process=False)
        rng = random.Random(11)
        for i in range(2000):
            text = "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 40)))
            m.handshakeFailed(rng.choice(("client", "upstream")), text)
        found = samples(m, "proxyd_tls_handshake_failures_total")
        self.assertEqual(len(found), 2 * len(TLS_REASONS))
        self.assertEqual(sum(found.values()), 2000)
        self.assertLessEqual(len(m._reasons), 256)

    def test_badSide(self):
        m = ProxyMetrics(process=False)
        self.assertRaises(ValueError, m.handshakeFailed, "server", "eof")


class PluginTests(SynchronousTestCase):
    def test_byPlugin(self):
        m = ProxyMetrics(process=False)
        m.pluginFailed("replace")
        m.pluginFailed("replace")
        m.pluginFailed("block#2")
        self.assertEqual(value(m, "proxyd_plugin_errors_total", plugin="replace"), 2)
        self.assertEqual(value(m, "proxyd_plugin_errors_total", plugin="block#2"), 1)

    def test_bounded(self):
        m = ProxyMetrics(process=False)
        for i in range(MAX_PLUGINS + 50):
            m.pluginFailed("p{}".format(i))
        found = samples(m, "proxyd_plugin_errors_total")
        self.assertEqual(len(found), MAX_PLUGINS + 1)
        self.assertEqual(value(m, "proxyd_plugin_errors_total", plugin="other"), 50)
        m.pluginFailed("p0")  # one already known keeps its own series
        self.assertEqual(value(m, "proxyd_plugin_errors_total", plugin="p0"), 2)


class _FakeLeaves:
    generated = 3
    hits = 40
    misses = 5
    cached = 3


class LeafTests(SynchronousTestCase):
    def test_zeroWithoutLeaves(self):
        m = ProxyMetrics(process=False)
        self.assertEqual(value(m, "proxyd_leaf_certificates_generated_total"), 0)
        self.assertEqual(value(m, "proxyd_leaf_cache_hits_total"), 0)
        self.assertEqual(value(m, "proxyd_leaf_cache_misses_total"), 0)

    def test_readAtScrapeTime(self):
        m = ProxyMetrics(process=False)
        leaves = _FakeLeaves()
        m.trackLeaves(leaves)
        self.assertEqual(value(m, "proxyd_leaf_certificates_generated_total"), 3)
        leaves.hits = 41
        self.assertEqual(value(m, "proxyd_leaf_cache_hits_total"), 41)
        self.assertEqual(value(m, "proxyd_leaf_cache_misses_total"), 5)
        self.assertEqual(value(m, "proxyd_leaf_cache_entries"), 3)

    def test_realLeafFactory(self):
        """The attributes read are the ones L{LeafFactory} keeps."""
        clock = Clock()
        clock.advance(time.time())
        leaves = LeafFactory(CertificateAuthority.inDirectory(self.mktemp()), clock=clock)
        m = ProxyMetrics(process=False)
        m.trackLeaves(leaves)
        self.successResultOf(leaves.leafFor("a.example"))
        self.successResultOf(leaves.leafFor("a.example"))
        self.successResultOf(leaves.leafFor("b.example"))
        self.assertEqual(value(m, "proxyd_leaf_certificates_generated_total"), 2)
        self.assertEqual(value(m, "proxyd_leaf_cache_hits_total"), 1)
        self.assertEqual(value(m, "proxyd_leaf_cache_misses_total"), 2)
        self.assertEqual(value(m, "proxyd_leaf_cache_entries"), 2)


class RegistryTests(SynchronousTestCase):
    def test_ownRegistry(self):
        """Two instances count apart, and the global registry is not touched."""
        before = {f.name for f in REGISTRY.collect()}
        a = ProxyMetrics()
        b = ProxyMetrics()
        a.connectionOpened()
        self.assertEqual(value(a, "proxyd_client_connections"), 1)
        self.assertEqual(value(b, "proxyd_client_connections"), 0)
        self.assertNotIdentical(a.registry, REGISTRY)
        self.assertEqual({f.name for f in REGISTRY.collect()}, before)

    def test_namesAndTypes(self):
        m = ProxyMetrics(process=False)
        m.requestDone("forward", b"GET", 200, 1, 1, 0.1)
        families = scrape(m)
        expected = {
            "proxyd_requests": "counter",
            "proxyd_tunnels": "counter",
            "proxyd_tunnels_open": "gauge",
            "proxyd_received_bytes": "counter",
            "proxyd_sent_bytes": "counter",
            "proxyd_upstream_connect_seconds": "histogram",
            "proxyd_request_duration_seconds": "histogram",
            "proxyd_client_connections": "gauge",
            "proxyd_leaf_certificates_generated": "counter",
            "proxyd_leaf_cache_hits": "counter",
            "proxyd_leaf_cache_misses": "counter",
            "proxyd_leaf_cache_entries": "gauge",
            "proxyd_tls_handshake_failures": "counter",
            "proxyd_plugin_errors": "counter",
            "proxyd_build_info": "gauge",
        }
        self.assertEqual({name: f.type for name, f in families.items()}, expected)
        for family in families.values():
            self.assertTrue(family.documentation, family.name)
            for sample in family.samples:
                self.assertFalse(sample.name.endswith("_created"), sample.name)

    def test_processMetrics(self):
        """By default the process' own metrics (open fds, memory) come along, where the OS has them."""
        families = scrape(ProxyMetrics())
        others = {name for name in families if not name.startswith("proxyd_")}
        self.assertTrue(all(name.startswith("process_") for name in others), others)
        self.assertIn("proxyd_requests", families)


class NullMetricsTests(SynchronousTestCase):
    def test_sameMethods(self):
        """NullMetrics has every public method of ProxyMetrics, with the same signature."""

        def methods(cls):
            return {
                name: inspect.signature(member)
                for name, member in inspect.getmembers(cls, inspect.isfunction)
                if not name.startswith("_")
            }

        self.assertEqual(methods(NullMetrics), methods(ProxyMetrics))
        self.assertTrue(methods(ProxyMetrics))

    def test_doNothing(self):
        n = NullMetrics()
        self.assertFalse(n.enabled)
        self.assertTrue(ProxyMetrics.enabled)
        n.requestDone("forward", b"GET", 200, 1, 2, 0.1)
        n.upstreamConnected(0.1)
        n.connectionOpened()
        n.connectionClosed()
        n.tunnelOpened()
        n.tunnelClosed()
        n.handshakeFailed("client", "eof")
        n.pluginFailed("x")
        n.trackLeaves(None)
        self.assertEqual(vars(n), {})


def request(site, data):
    """Feed C{data} to a protocol of C{site}: (status, {header: value}, body)."""
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    response = transport.value()
    protocol.connectionLost(Failure(ConnectionDone()))
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class ServingTests(SynchronousTestCase):
    def setUp(self):
        self.metrics = ProxyMetrics(process=False)
        self.clock = Clock()
        self.site = metricsFactory(self.metrics, reactor=self.clock)

    def get(self, path, method=b"GET"):
        return request(self.site, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    def test_metrics(self):
        self.metrics.requestDone("forward", b"GET", 200, 10, 20, 0.01)
        status, headers, body = self.get(b"/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], CONTENT_TYPE_LATEST.encode("ascii"))
        self.assertEqual(int(headers[b"content-length"]), len(body))
        families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
        self.assertEqual(families["proxyd_requests"].samples[0].value, 1)

    def test_countersMove(self):
        before = self.get(b"/metrics")[2]
        self.metrics.connectionOpened()
        after = self.get(b"/metrics")[2]
        self.assertIn(b"proxyd_client_connections 0.0", before)
        self.assertIn(b"proxyd_client_connections 1.0", after)

    def test_queryIgnored(self):
        status, headers, body = self.get(b"/metrics?name[]=x")
        self.assertEqual(status, 200)
        self.assertIn(b"proxyd_requests_total", body)

    def test_head(self):
        status, headers, body = self.get(b"/metrics", b"HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")
        self.assertGreater(int(headers[b"content-length"]), 0)

    def test_healthz(self):
        status, headers, body = self.get(b"/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        self.assertTrue(headers[b"content-type"].startswith(b"text/plain"))

    def test_unhealthy(self):
        site = metricsFactory(self.metrics, reactor=self.clock, health=lambda: "draining")
        status, headers, body = request(site, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body), (503, b"draining\n"))

    def test_notFound(self):
        for path in (b"/", b"/metrics/", b"/metrics/x", b"/healthz/x", b"/favicon.ico"):
            self.assertEqual(self.get(path)[0], 404, path)

    def test_otherMethods(self):
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            status, headers, body = self.get(b"/metrics", method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers[b"allow"], b"GET, HEAD")

    def test_quiet(self):
        """No access-log line and no timer per scrape: Prometheus scrapes every few seconds."""
        self.site.startFactory()
        self.get(b"/metrics")
        self.site.stopFactory()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.site.noisy)
