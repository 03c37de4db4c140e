"""
--metrics through the real daemon: its own listener answers /metrics in
the Prometheus text format (parsed with prometheus_client's parser) and
/healthz; the counters move with traffic; the listener serves nothing
else; and the port in use is refused at start in one line.
"""

import socket

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import tcpListener


def scrape(url):
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families, name, **labels):
    for sample in families[name].samples:
        if sample.name == name + "_total" or sample.name == name:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_countersMoveWithTraffic(proxyd, origin):
    desc, (host, port) = tcpListener()
    d = proxyd("--metrics", desc)
    metricsURL = "http://%s:%d" % (host, port)
    before = scrape(metricsURL)
    assert value(before, "proxyd_requests", mode="forward", method="GET", code="2xx") == 0
    for _ in range(3):
        assert requests.get(origin.url("/hello"), proxies=d.proxies, timeout=10).status_code == 200
    assert requests.get(origin.url("/status/404"), proxies=d.proxies, timeout=10).status_code == 404
    requests.request("BREW", origin.url("/hello"), proxies=d.proxies, timeout=10)
    after = scrape(metricsURL)
    assert value(after, "proxyd_requests", mode="forward", method="GET", code="2xx") == 3
    assert value(after, "proxyd_requests", mode="forward", method="GET", code="4xx") == 1
    assert value(after, "proxyd_requests", mode="forward", method="OTHER") == 1
    assert value(after, "proxyd_sent_bytes") > 0
    assert value(after, "proxyd_received_bytes") > 0
    connects = [s for s in after["proxyd_upstream_connect_seconds"].samples if s.name.endswith("_count")]
    assert connects and connects[0].value >= 1
    assert requests.get(metricsURL + "/healthz", timeout=10).text == "ok\n"
    assert requests.get(metricsURL + "/other", timeout=10).status_code == 404
    assert requests.post(metricsURL + "/metrics", timeout=10).status_code == 405
    assert "Traceback" not in d.logText()


def test_metricsPortInUseRefused(runTwistd):
    desc, probe = tcpListener()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = "tcp:%d:interface=127.0.0.1" % (taken.getsockname()[1],)
        # No probe: the proxy's own port is up before the metrics one fails.
        r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", desc, "--metrics", busy])
    assert r.returncode not in (0, None) and not r.timedOut, r
    lines = r.stderrLines
    assert len(lines) == 1 and "--metrics " + busy in lines[0] and "in use" in lines[0], r
