#!/usr/bin/env python3
"""proxyd against its peers on one loopback machine: requests/s, CONNECT MB/s, RSS.

Run it with bench/run.sh (see bench/README.md). It installs what it needs
(Debian packages with apt-get, venvs under bench/.work with pip), starts one
nginx origin on 127.0.0.1, then for each proxy in turn starts it pinned to
one core, measures, and stops it. Raw results go to bench/results/*.json,
the printed table to bench/results/*.txt.

Not part of the test suite. Loopback only: every socket it opens is on
127.0.0.1. Every process it starts is stopped on exit, on Ctrl-C and on
SIGTERM/SIGHUP; every wait and loop is bounded in count and time.
"""

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import benchlib  # bench/ is on sys.path when run as a script
from benchlib import (
    BENCH, LOOPBACK, RESULTS, SMALL_SIZE, WRK_LUA, Procs, RssSampler, cpu_seconds, curl_json, dig, log, mib, num,
    port_free, ratio, rss_kib, run, table, wait_port,
)

WORK = BENCH / ".work"

ALL_PROXIES = ["baseline", "proxyd", "proxyd-headers", "proxyd-metrics", "tinyproxy", "squid", "mitmdump",
               "proxypy"]
# proxyd and its variants: not peers (the "proxyd relative to each peer" table skips them)
PROXYD_VARIANTS = ("proxyd", "proxyd-headers", "proxyd-metrics")
# proxyd with the bundled headers plugin on (one request and one response
# header set): what a head-only plugin costs.  Target: >= 0.8 of plain proxyd.
HEADERS_PLUGIN = "headers:set-request=X-Bench:1,set-response=X-Proxied:1"
# proxyd with --metrics on (Prometheus text at /metrics on a loopback port of its own), no
# plugin: what updating the counters costs on the hot path.  Target (issue 7): >= 0.9 of plain
# proxyd's req/s.  Its listener is on the first free port of origin+40..origin+49 (inside
# run.py's range, below mitm.py's 18950+).
METRICS_TARGET = 0.9
METRICS_PORT_OFFSETS = range(40, 50)
ALL_MEASURES = ["parsers", "rps", "connect", "rss"]
DEBIAN_PACKAGES = {  # binary -> Debian package (bookworm names, checked with apt-cache policy)
    "nginx": "nginx",
    "wrk": "wrk",
    "curl": "curl",
    "taskset": "util-linux",
    "tinyproxy": "tinyproxy",
    "squid": "squid",
}

# Targets for proxyd from issue 3 ("How it is checked").
TARGETS = """\
rps c=50 >= proxy.py's, and >= 5x mitmdump's; CONNECT >= 0.9x no-proxy MB/s;
slow-reader RSS growth < 2 MiB; idle RSS < 40 MiB"""

benchlib.LABEL = 'bench'
PROCS = Procs()
PROXYD_DEPS = ["h11", "httptools", "wheel"]   # venv-proxyd: parsers.py runs there too


# ------------------------------------------------------------------- origin

def start_origin(port, cpu):
    p = benchlib.start_nginx(PROCS, WORK, port, cpu,
                             "origin for proxyd bench/run.py: loopback only, its own paths, no system config",
                             tcp_nopush=True)
    benchlib.check_small(port, "origin")
    return p


# ------------------------------------------------------------------ proxies
#
# benchlib.Proxy and its proxyd, mitmdump and proxy.py: install, venv, argv; here
# what run.py adds. Each is constructed as cls(WORK, args, port, origin_port).

class Baseline(benchlib.Proxy):
    name, label = "baseline", "no proxy"


class Proxyd(benchlib.Proxyd):
    deps = PROXYD_DEPS


class ProxydHeaders(Proxyd):
    name, label = "proxyd-headers", "proxyd+headers"

    def argv(self):
        return self.record(Proxyd.argv(self) + ["--plugin", HEADERS_PLUGIN])


class ProxydMetrics(Proxyd):
    """proxyd with `--metrics tcp:MPORT:interface=127.0.0.1`. It keeps count of the GET
    requests the bench sends through it (sent_get: at least that many were answered;
    sent_slack: up to that many more may have reached proxyd, e.g. the ones in flight when
    wrk stops), so that /metrics can be checked against them at the end (check_metrics)."""

    name, label = "proxyd-metrics", "proxyd+metrics"

    def prepare(self):
        Proxyd.prepare(self)
        self.metrics_port = next((self.origin_port + k for k in METRICS_PORT_OFFSETS
                                  if port_free(self.origin_port + k)), None)
        if self.metrics_port is None:   # all ten busy: one the kernel picks
            with socket.socket() as s:
                s.bind((LOOPBACK, 0))
                self.metrics_port = s.getsockname()[1]
        self.metrics_url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        self.sent_get = self.sent_slack = 0
        self.sent_unknown = 0      # wrk runs whose count is unknown (wrk failed)
        self.metrics_before = None

    def argv(self):
        return self.record(Proxyd.argv(self) + ["--metrics", f"tcp:{self.metrics_port}:interface={LOOPBACK}"])

    def after_start(self, proc):
        if not wait_port(self.metrics_port, proc, 20):
            return f"--metrics listener not up on {LOOPBACK}:{self.metrics_port} within 20 s (exit {proc.poll()})"
        try:
            self.metrics_before = forward_gets(scrape_metrics(self.metrics_url))
        except (OSError, ValueError, urllib.error.URLError) as e:
            return f"{self.metrics_url} unreadable at start: {type(e).__name__}: {e}"
        return None

    def count_sent(self, least, slack=0):
        self.sent_get += least
        self.sent_slack += slack


def count_sent(px, least, slack=0):
    """LEAST GET requests certainly answered through PX, SLACK more that may have reached it."""
    if isinstance(px, ProxydMetrics):
        px.count_sent(least, slack)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never via $http_proxy


def scrape_metrics(url, timeout=5):
    """GET URL (a Prometheus text page): {(name, frozenset of (label, value) pairs): value}."""
    with _NO_PROXY.open(url, timeout=timeout) as r:
        if r.status != 200:
            raise ValueError(f"{url}: HTTP {r.status}")
        text = r.read(4 * 1024 * 1024).decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if not m or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[m.group(1), labels] = float(m.group(3))
    if not out:
        raise ValueError(f"{url}: no samples")
    return out


def forward_gets(samples):
    """proxyd_requests_total{mode="forward",method="GET"}, summed over status classes:
    {code: count} (empty if none yet)."""
    got = {}
    for (name, labels), v in samples.items():
        d = dict(labels)
        if name == "proxyd_requests_total" and d.get("mode") == "forward" and d.get("method") == "GET":
            got[d.get("code")] = got.get(d.get("code"), 0) + v
    return got


def check_metrics(px, res):
    """Scrape PX's /metrics once and compare its forward GET counter with what the bench sent.
    Sets res["metrics_check"], and res["metrics_error"] if /metrics is unreachable or the
    counter did not move as it should."""
    before = px.metrics_before or {}
    lo = px.sent_get
    hi = None if px.sent_unknown else lo + px.sent_slack
    chk = {"url": px.metrics_url, "sent_get_min": lo, "sent_get_max": hi, "before": before}
    res["metrics_check"] = chk
    try:
        after = forward_gets(scrape_metrics(px.metrics_url))
    except (OSError, ValueError, urllib.error.URLError) as e:
        chk["ok"] = False
        res["metrics_error"] = f"/metrics unreachable at the end: {type(e).__name__}: {e}"
    else:
        moved = sum(after.values()) - sum(before.values())
        chk.update(after=after, moved=moved)
        chk["ok"] = ok = moved >= lo and (hi is None or moved <= hi) and moved > 0
        if not ok:
            res["metrics_error"] = (f"proxyd_requests_total{{mode=forward,method=GET}} moved by {moved:.0f}, "
                                    f"but the bench sent {lo} to {hi if hi is not None else '?'} GETs through it")
    if res.get("metrics_error"):
        log(f"!!! {px.name}: METRICS CHECK FAILED: {res['metrics_error']}")
    else:
        log(f"{px.name}: /metrics forward GET counter moved by {chk['moved']:,.0f} "
            f"(bench sent {lo:,} to {num(hi)}; by status class {after}): ok")


class Tinyproxy(benchlib.DebianProxy):
    name, label = "tinyproxy", "tinyproxy"
    command_head = ["tinyproxy", "-d", "-c"]
    summary = "Port, Listen, Allow 127.0.0.1, ConnectPort origin, LogLevel Warning"

    def conf_text(self):
        return f"""\
# proxyd bench/run.py: loopback only, no syslog, no per-request logging
Port {self.port}
Listen {LOOPBACK}
Timeout 600
Allow {LOOPBACK}
ConnectPort {self.origin_port}
MaxClients 100
LogFile "{self.dir}/tinyproxy.log"
LogLevel Warning
PidFile "{self.dir}/tinyproxy.pid"
"""


class Squid(benchlib.DebianProxy):
    name, label = "squid", "squid"
    command_head = ["squid", "-N", "-f"]
    summary = "http_port 127.0.0.1, allow localhost, CONNECT to origin port, cache deny all, access_log none"

    def conf_text(self):
        return f"""\
# proxyd bench/run.py: loopback only, no cache, own pid/log paths
http_port {LOOPBACK}:{self.port}
acl bench_clients src {LOOPBACK}/32
acl bench_origin_port port {self.origin_port}
acl bench_connect method CONNECT
http_access deny bench_connect !bench_origin_port
http_access allow bench_clients
http_access deny all
cache deny all
access_log none
cache_store_log none
cache_log {self.dir}/cache.log
pid_filename {self.dir}/squid.pid
coredump_dir {self.dir}
netdb_filename none
pinger_enable off
shutdown_lifetime 1 seconds
logfile_rotate 0
"""

    def prepare(self):
        benchlib.DebianProxy.prepare(self)
        if os.geteuid() == 0:
            # squid refuses to run as root; it drops to its cache_effective_user ("proxy")
            shutil.chown(self.dir, "proxy", "proxy")
            for f in self.dir.iterdir():
                shutil.chown(f, "proxy", "proxy")


class Mitmdump(benchlib.Mitmdump):
    def options(self):
        # ignore_hosts for the origin: the CONNECT tunnel is passed through blind, as
        # proxyd's, tinyproxy's and squid's are (mitmproxy would otherwise parse the
        # HTTP inside the tunnel).
        return ["--set", f"ignore_hosts=^{re.escape(LOOPBACK)}:{self.origin_port}$"]


PROXY_CLASSES = {c.name: c for c in (Baseline, Proxyd, ProxydHeaders, ProxydMetrics, Tinyproxy, Squid, Mitmdump,
                                      benchlib.ProxyPy)}


# -------------------------------------------------------------- measuring

def probe_plain(port, origin_port):
    """One plain request through the proxy, then a second on the same connection.

    Returns (ok, keepalive, detail)."""
    url = f"http://{LOOPBACK}:{origin_port}/small"
    try:
        c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        c.request("GET", url)
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != SMALL_SIZE:
            return False, None, f"status {r.status}, {len(body)} bytes"
        keepalive = not r.will_close
        sock = c.sock
        if keepalive:
            # some proxies answer without `Connection: close` and close anyway
            try:
                c.request("GET", url)
                r2 = c.getresponse()
                body2 = r2.read()
                keepalive = (r2.status == 200 and len(body2) == SMALL_SIZE and c.sock is sock)
            except (OSError, http.client.HTTPException):
                keepalive = False
        c.close()
        return True, keepalive, "ok"
    except (OSError, http.client.HTTPException) as e:
        return False, None, f"{type(e).__name__}: {e}"


def probe_connect(port, origin_port, cpu):
    rc, w, err = curl_json(["-p", "-x", f"http://{LOOPBACK}:{port}",
                            f"http://{LOOPBACK}:{origin_port}/small", "--max-time", "10"], 20, cpu)
    ok = rc == 0 and w.get("http_code") == 200 and w.get("size_download") == SMALL_SIZE
    return ok, f"curl exit {rc}, connect {w.get('http_connect')}, http {w.get('http_code')} {err}"


def wrk_once(a, port, origin_port, conc, duration, direct, pid=None):
    if direct:
        url, target = f"http://{LOOPBACK}:{origin_port}/", "/small"
    else:
        url, target = f"http://{LOOPBACK}:{port}/", f"http://{LOOPBACK}:{origin_port}/small"
    host = f"{LOOPBACK}:{origin_port}"
    argv = ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "5s", "-s", WRK_LUA, url,
            "--", target, host]
    cpu0 = cpu_seconds(pid) if pid else None
    try:
        p = run(argv, timeout=duration + 60, check=False, cpu=a.client_cpu, quiet=True)
    except subprocess.TimeoutExpired:
        return {"valid": False, "error": "wrk did not finish in time"}
    cpu = cpu_seconds(pid) - cpu0 if pid else None
    out = p.stdout.decode(errors="replace")
    m = re.search(r"^BENCHJSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        return {"valid": False, "error": f"wrk exit {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}"}
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    errs = r["errors"]
    r["valid"] = r["requests"] > 0 and errs["status"] == 0
    if not r["valid"]:
        r["error"] = f"{errs['status']} non-2xx/3xx responses" if r["requests"] else "no responses"
    r["bytes_per_response"] = r["bytes"] / r["requests"] if r["requests"] else 0
    # the proxy's own CPU time per request: less sensitive to other load on the machine
    r["proxy_cpu_s"] = cpu
    r["proxy_cpu_us_per_req"] = cpu / r["requests"] * 1e6 if cpu is not None and r["requests"] else None
    return r


def count_wrk(px, r, conc):
    """A wrk run through PX: its answered requests, and up to CONC more in flight at its end."""
    if not isinstance(px, ProxydMetrics):
        return
    if isinstance(r.get("requests"), int):
        px.count_sent(r["requests"], conc)
    else:
        px.sent_unknown += 1


def measure_rps(a, targets):
    """targets: [(proxy, pid or None)]. Returns {proxy name: rps results}.

    With several targets the runs are interleaved: round i runs each target once,
    so bursts of other work on the machine fall on all of them alike."""
    out = {px.name: {} for px, _ in targets}
    for conc in a.concurrency:
        for px, pid in targets:
            # warm-up (connections made, caches warm), not counted
            count_wrk(px, wrk_once(a, px.port, px.origin_port, conc, 1, px.name == "baseline"), conc)
        runs = {px.name: [] for px, _ in targets}
        for i, (px, pid) in benchlib.rounds(targets, a.runs):
            r = wrk_once(a, px.port, px.origin_port, conc, a.duration, px.name == "baseline", pid)
            count_wrk(px, r, conc)
            runs[px.name].append(r)
            log(f"{px.name} rps c={conc} run {i + 1}/{a.runs}: "
                + (f"{r['rps']:.0f} req/s" if r.get("valid") else f"invalid ({r.get('error')})")
                + (f", {r['proxy_cpu_us_per_req']:.0f} us proxy CPU/req" if r.get("proxy_cpu_us_per_req") else ""))
        for px, _ in targets:
            rs = runs[px.name]
            good = [r["rps"] for r in rs if r.get("valid")]
            cpu = [r["proxy_cpu_us_per_req"] for r in rs if r.get("valid") and r.get("proxy_cpu_us_per_req")]
            share = [r["rps"] * r["proxy_cpu_us_per_req"] / 1e6 for r in rs
                     if r.get("valid") and r.get("proxy_cpu_us_per_req")]
            out[px.name][f"c{conc}"] = {"median": statistics.median(good) if good else None,
                                        "cpu_us_per_req_median": statistics.median(cpu) if cpu else None,
                                        "cpu_share_median": statistics.median(share) if share else None,
                                        "valid_runs": len(good), "runs": rs}
    for px, pid in targets:
        if pid:
            out[px.name]["rss_after_kib"] = rss_kib(pid)
    return out


def connect_once(a, px, pid, big_size):
    via = [] if px.name == "baseline" else ["-p", "-x", f"http://{LOOPBACK}:{px.port}"]
    with RssSampler(pid) as s:
        rc, w, err = curl_json(via + [f"http://{LOOPBACK}:{px.origin_port}/big",
                                      "--max-time", str(a.connect_max_time)],
                               a.connect_max_time + 30, a.client_cpu)
    size = w.get("size_download", 0)
    r = {"curl_exit": rc, "size": size, "http_code": w.get("http_code"),
         "http_connect": w.get("http_connect"), "time_total": w.get("time_total"),
         "mb_per_s": (w.get("speed_download") or 0) / 1e6, "rss": s.result()}
    r["valid"] = rc == 0 and size == big_size and w.get("http_code") == 200
    if not r["valid"]:
        r["error"] = f"curl exit {rc}, {size} of {big_size} bytes, {err[-300:]}"
    return r


def measure_connect(a, targets, big_size):
    """targets: [(proxy, pid or None)], interleaved like measure_rps."""
    runs = {px.name: [] for px, _ in targets}
    for i, (px, pid) in benchlib.rounds(targets, a.connect_runs):
        r = connect_once(a, px, pid, big_size)
        runs[px.name].append(r)
        log(f"{px.name} CONNECT run {i + 1}/{a.connect_runs}: "
            + (f"{r['mb_per_s']:.0f} MB/s" if r["valid"] else f"invalid ({r['error']})")
            + (f", RSS +{r['rss']['growth_kib'] / 1024:.1f} MiB" if r["rss"] else ""))
    return {px.name: benchlib.download_summary(runs[px.name])
            for px, _ in targets}


def measure_slow(a, px, pid, tunnel):
    via = (["-p"] if tunnel else []) + ["-x", f"http://{LOOPBACK}:{px.port}"]
    with RssSampler(pid, interval=0.2) as s:
        rc, w, err = curl_json(via + [f"http://{LOOPBACK}:{px.origin_port}/big", "--limit-rate", "1M",
                                      "--max-time", str(a.slow_seconds)],
                               a.slow_seconds + 30, a.client_cpu)
    size = w.get("size_download", 0)
    r = {"curl_exit": rc, "received": size, "http_code": w.get("http_code"), "rss": s.result()}
    # 28 = the --max-time we asked for; anything else is a failure of the relay
    r["valid"] = rc == 28 and w.get("http_code") == 200 and size > 0
    if not r["valid"]:
        r["error"] = f"curl exit {rc}, http {w.get('http_code')}, {size} bytes, {err[-300:]}"
    kind = "tunnel" if tunnel else "plain"
    log(f"{px.name} slow reader ({kind}, 1 MB/s, {a.slow_seconds} s): received {size / 1e6:.1f} MB, "
        f"RSS +{r['rss']['growth_kib'] / 1024:.1f} MiB" + ("" if r["valid"] else f" invalid ({r['error']})"))
    return r


def start_proxy(a, px):
    """Start and probe one proxy. Returns (Popen or None, results dict)."""
    res = {"label": px.label, "version": px.version, "port": px.port,
           "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    if px.name == "baseline":
        res["flags"] = "direct to the origin"
        res["plain_ok"] = res["connect_ok"] = True
        return None, res
    res["plain_ok"] = res["connect_ok"] = False
    p = benchlib.launch(PROCS, px, res, a.proxy_cpu, a.start_timeout)
    if p is None:
        return None, res
    ok, keepalive, detail = probe_plain(px.port, px.origin_port)
    res["plain_ok"], res["client_keepalive"] = ok, keepalive
    # answered: the first GET if ok, the second if keep-alive; a failed one may have been counted
    count_sent(px, int(ok) + int(bool(keepalive)), 2 - int(ok) - int(bool(keepalive)))
    cok, cdetail = probe_connect(px.port, px.origin_port, a.client_cpu)
    res["connect_ok"] = cok
    log(f"{px.name}: plain {detail}, keep-alive {keepalive}; CONNECT {'ok' if cok else cdetail}; "
        f"idle RSS {res['rss_start_kib'] / 1024:.1f} MiB")
    if not ok:
        res["error"] = f"plain request through the proxy failed: {detail}"
    if not cok:
        res["connect_error"] = cdetail
    return p, res


def finish_proxy(a, px, p, res):
    """Slow-reader RSS tests, final RSS, stop."""
    if p is None:
        return
    try:
        if isinstance(px, ProxydMetrics):
            # before the slow readers, whose GETs are still running when they are counted
            check_metrics(px, res)
        if "rss" in a.measure:
            if res["plain_ok"]:
                res["slow_plain"] = measure_slow(a, px, p.pid, tunnel=False)
            if res["connect_ok"]:
                res["slow_tunnel"] = measure_slow(a, px, p.pid, tunnel=True)
        time.sleep(2.0)
        res["rss_end_kib"] = rss_kib(p.pid)
        if p.poll() is not None:
            res["error"] = (res.get("error") or "") + f" process exited ({p.returncode}) during the bench"
    finally:
        PROCS.stop(p)


def bench_in_turn(a, proxies, big_size, results, save):
    for px in proxies:
        log(f"=== {px.label} ===")
        p, res = start_proxy(a, px)
        results["proxies"][px.name] = res
        try:
            pid = p.pid if p else None
            if (p or px.name == "baseline") and res["plain_ok"] and "rps" in a.measure:
                res["rps"] = measure_rps(a, [(px, pid)])[px.name]
            if (p or px.name == "baseline") and res["connect_ok"] and "connect" in a.measure:
                res["connect"] = measure_connect(a, [(px, pid)], big_size)[px.name]
        finally:
            finish_proxy(a, px, p, res)
        save()


def bench_interleaved(a, proxies, big_size, results, save):
    started = []
    try:
        for px in proxies:
            p, res = start_proxy(a, px)
            results["proxies"][px.name] = res
            if p or px.name == "baseline":
                started.append((px, p, res))
        if "rps" in a.measure:
            t = [(px, p.pid if p else None) for px, p, res in started if res["plain_ok"]]
            if t:
                for name, r in measure_rps(a, t).items():
                    results["proxies"][name]["rps"] = r
            save()
        if "connect" in a.measure:
            t = [(px, p.pid if p else None) for px, p, res in started if res["connect_ok"]]
            if t:
                for name, r in measure_connect(a, t, big_size).items():
                    results["proxies"][name]["connect"] = r
            save()
        for px, p, res in started:
            finish_proxy(a, px, p, res)
            save()
    finally:
        for px, p, res in started:
            if p is not None:
                PROCS.stop(p)


def run_parsers(a):
    d = WORK / "venv-proxyd"
    if not (d / "bin" / "python").exists():
        d = benchlib.venv(WORK, "proxyd", a.python, PROXYD_DEPS)
    argv = [d / "bin" / "python", BENCH / "parsers.py", "--json", "-"] + (["--quick"] if a.quick else [])
    p = run(argv, timeout=900, cpu=a.proxy_cpu)
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


# ------------------------------------------------------------------- report

def render(results):
    lines = []
    m = results["meta"]
    lines.append(f"proxyd bench  {m['started']}  ({m['host']['cpu']}, {m['host']['cpus']} cores, "
                 f"proxy on core {m['options']['proxy_cpu']}, wrk/curl on core {m['options']['client_cpu']}, "
                 + (f"nginx on core {m['options'].get('origin_cpu', m['options']['client_cpu'])})"
                    if m['options'].get('origin_cpu', 0) is not None else "nginx not pinned)"))
    g = m.get("proxyd_git") or {}
    if g.get("commit"):
        src = (f"installed from {g['source']}" if g.get("source", "").startswith("git archive") else
               f"installed from the work tree: outside bench/ {g.get('dirty_files_outside_bench')} modified, "
               f"{g.get('untracked_files_outside_bench', '?')} untracked files")
        lines.append(f"proxyd {g['commit'][:12]} ({g.get('branch')}) \"{g.get('subject')}\" "
                     f"{g.get('date')}; {src}")
    o = m["options"]
    lines.append(f"rps: median of {o['runs']} x {o['duration']} s wrk runs (1 thread); CONNECT: median of "
                 f"{o['connect_runs']} x {o['big_mib']} MiB curl downloads; slow reader: curl --limit-rate 1M "
                 f"for {o['slow_seconds']} s; "
                 + ("proxies all up, runs interleaved" if o.get("interleave") else "one proxy at a time"))
    lines.append("")
    P = results["proxies"]
    names = [n for n in ALL_PROXIES if n in P]
    concs = o["concurrency"]
    cmax = max(concs)
    hdr = (["proxy", "version", "keep-alive"] + [f"req/s c={c}" for c in concs]
           + [f"CPU us/req c={cmax}", "CONNECT MB/s", "idle RSS", "dRSS tunnel", "dRSS slow tunnel",
              "dRSS slow plain"])
    rows = []
    for n in names:
        r = P[n]
        ka = r.get("client_keepalive")
        row = [r["label"], (r.get("version") or "-")[:22],
               "-" if n == "baseline" else ("yes" if ka else ("no" if ka is False else "?"))]
        for c in concs:
            row.append(num(dig(r, "rps", f"c{c}", "median")))
        row.append(num(dig(r, "rps", f"c{cmax}", "cpu_us_per_req_median")))
        row.append(num(dig(r, "connect", "median_mb_per_s")))
        row.append(num(mib(r.get("rss_start_kib")), "{:.1f} MiB"))
        row.append(num(mib(dig(r, "connect", "rss_growth_kib_max")), "{:+.1f} MiB"))
        row.append(num(mib(dig(r, "slow_tunnel", "rss", "growth_kib")), "{:+.1f} MiB"))
        row.append(num(mib(dig(r, "slow_plain", "rss", "growth_kib")), "{:+.1f} MiB"))
        rows.append(row)
    lines += table(hdr, rows)
    errs = [(P[n]["label"], P[n][k]) for n in names for k in ("error", "connect_error", "metrics_error")
            if P[n].get(k)]
    for lab, e in errs:
        lines.append(f"  ! {lab}: {e}")
    for n in names:
        for c in concs:
            lines += benchlib.invalid_runs(P[n]["label"], f"c={c}", dig(P[n], "rps", f"c{c}"))
        lines += benchlib.invalid_runs(P[n]["label"], "CONNECT", P[n].get("connect"))

    # ratios to the baseline
    base = P.get("baseline")
    if base:
        lines.append("")
        lines.append("ratio to no proxy (proxy / direct):")
        hdr2 = ["proxy"] + [f"req/s c={c}" for c in concs] + ["CONNECT MB/s"]
        rows2 = []
        for n in names:
            if n == "baseline":
                continue
            row = [P[n]["label"]]
            for c in concs:
                row.append(ratio(dig(P[n], "rps", f"c{c}", "median"), dig(base, "rps", f"c{c}", "median")))
            row.append(ratio(dig(P[n], "connect", "median_mb_per_s"), dig(base, "connect", "median_mb_per_s")))
            rows2.append(row)
        lines += table(hdr2, rows2)
    pd = P.get("proxyd")
    ph = P.get("proxyd-headers")
    if pd and ph:
        lines.append("")
        cells = ["req/s c={}: {}".format(c, ratio(dig(ph, "rps", f"c{c}", "median"), dig(pd, "rps", f"c{c}", "median")))
                 for c in concs]
        lines.append("plugin cost (proxyd+headers / proxyd; target >= 0.8): " + ", ".join(cells))
    pm = P.get("proxyd-metrics")
    if pd and pm:
        lines += metrics_cost_lines(pd, pm, concs, not ph)
    if pd and [n for n in names if n not in ("baseline",) + PROXYD_VARIANTS]:
        lines.append("")
        lines.append("proxyd relative to each peer (proxyd / peer; RSS: proxyd minus peer):")
        hdr3 = (["peer"] + [f"req/s c={c}" for c in concs] + [f"CPU/req c={max(concs)} (peer/proxyd)"]
                + ["CONNECT MB/s", "idle RSS", "dRSS slow plain"])
        rows3 = []
        for n in names:
            if n in ("baseline",) + PROXYD_VARIANTS:
                continue
            row = [P[n]["label"]]
            for c in concs:
                row.append(ratio(dig(pd, "rps", f"c{c}", "median"), dig(P[n], "rps", f"c{c}", "median")))
            k = f"c{max(concs)}"
            row.append(ratio(dig(P[n], "rps", k, "cpu_us_per_req_median"), dig(pd, "rps", k, "cpu_us_per_req_median")))
            row.append(ratio(dig(pd, "connect", "median_mb_per_s"), dig(P[n], "connect", "median_mb_per_s")))
            a, b = pd.get("rss_start_kib"), P[n].get("rss_start_kib")
            row.append("-" if a is None or b is None else f"{(a - b) / 1024:+.1f} MiB")
            a, b = dig(pd, "slow_plain", "rss", "growth_kib"), dig(P[n], "slow_plain", "rss", "growth_kib")
            row.append("-" if a is None or b is None else f"{(a - b) / 1024:+.1f} MiB")
            rows3.append(row)
        lines += table(hdr3, rows3)
    if pd:
        lines.append("")
        lines.append("proxyd targets (issue 3): " + TARGETS.replace("\n", " "))
        lines += ["  " + t for t in check_targets(results)]
    if results.get("parsers"):
        p = results["parsers"]
        lines.append("")
        lines.append(f"parsers (one proxied exchange, Python {p['python']}, median of {p['rounds']} rounds): "
                     f"h11 {p['h11_version']} {p['h11_us_per_exchange']['median']:.1f} us, "
                     f"httptools {p['httptools_version']} {p['httptools_us_per_exchange']['median']:.1f} us, "
                     f"ratio {p['ratio_h11_over_httptools']}x "
                     f"(both include {p['shared_filtering_us_per_exchange']['median']:.1f} us of shared header filtering)")
    lines.append("")
    shares = []
    for n in names:
        v = dig(P[n], "rps", f"c{max(concs)}")
        if v and v.get("runs"):
            sh = v.get("cpu_share_median")
            if sh is None:   # results saved before cpu_share_median existed
                xs = [r["rps"] * r["proxy_cpu_us_per_req"] / 1e6 for r in v["runs"]
                      if r.get("valid") and r.get("proxy_cpu_us_per_req")]
                sh = statistics.median(xs) if xs else None
            if sh is not None:
                shares.append(f"{P[n]['label']} {sh:.2f}")
    if shares:
        lines.append(f"proxy's CPU use during the c={max(concs)} runs, median (1.00 = its whole pinned core; "
                     "well under 1 = it shared the core with other work, req/s is then low and "
                     "CPU us/req is the figure to compare): " + ", ".join(shares))
    loads = [f"{P[n]['label']} {P[n]['loadavg_before'][0]:.2f}" for n in names if P[n].get("loadavg_before")]
    if loads:
        lines.append("1-min load average before each proxy (2 cores; other work on the machine shows here): "
                     + ", ".join(loads))
    lines.append("dRSS = peak VmRSS (process and its children) during the download minus VmRSS just before; "
                 "idle RSS = VmRSS 1 s after start;")
    lines.append("CPU us/req = the proxy's own user+system CPU time per request (less disturbed by other load "
                 "than req/s); keep-alive = a second request is answered on the same client connection.")
    return "\n".join(lines)


def metrics_cost_lines(pd, pm, concs, blank):
    """The --metrics cost: req/s ratio proxyd+metrics / proxyd per concurrency (medians over the
    runs) against the issue-7 target, each one's CPU us/req, and the /metrics counter check."""
    lines = [""] if blank else []
    cells = []
    for c in concs:
        on, off = dig(pm, "rps", f"c{c}", "median"), dig(pd, "rps", f"c{c}", "median")
        con, coff = (dig(pm, "rps", f"c{c}", "cpu_us_per_req_median"),
                     dig(pd, "rps", f"c{c}", "cpu_us_per_req_median"))
        verdict = "-" if not on or not off else ("met" if on >= METRICS_TARGET * off else "MISS")
        cells.append(f"c={c}: {ratio(on, off)} {verdict} (CPU us/req {num(coff)} off, {num(con)} on, "
                     f"off/on {ratio(coff, con)})")
    lines.append(f"metrics cost (proxyd+metrics / proxyd, req/s; issue 7 target >= {METRICS_TARGET}): "
                 + "; ".join(cells))
    chk = pm.get("metrics_check")
    if chk:
        hi = chk.get("sent_get_max")
        if "moved" in chk:
            lines.append(f"  /metrics after the runs: proxyd_requests_total{{mode=forward,method=GET}} moved by "
                         f"{chk['moved']:,.0f}; the bench sent {chk['sent_get_min']:,} answered GETs "
                         f"(+ up to {num(None if hi is None else hi - chk['sent_get_min'])} in flight): "
                         + ("ok" if chk.get("ok") else "FAILED"))
        else:
            lines.append(f"  /metrics after the runs: FAILED ({pm.get('metrics_error')})")
    return lines


def check_targets(results):
    P = results["proxies"]
    pd = P["proxyd"]
    verdict = benchlib.Verdicts(unknown="-")

    v, pp, mm = (dig(pd, "rps", "c50", "median"), dig(P, "proxypy", "rps", "c50", "median"),
                 dig(P, "mitmdump", "rps", "c50", "median"))
    verdict("req/s c=50 >= proxy.py", None if v is None or pp is None else v >= pp,
            f"{num(v)} vs {num(pp)}")
    cv, cp = dig(pd, "rps", "c50", "cpu_us_per_req_median"), dig(P, "proxypy", "rps", "c50", "cpu_us_per_req_median")
    verdict("CPU per request c=50 <= proxy.py's (the same target, free of core sharing)",
            None if cv is None or cp is None else cv <= cp, f"{num(cv)} vs {num(cp)} us")
    verdict("req/s c=50 >= 5x mitmdump", None if v is None or mm is None else v >= 5 * mm,
            f"{num(v)} vs 5 x {num(mm)}")
    c, b = dig(pd, "connect", "median_mb_per_s"), dig(P, "baseline", "connect", "median_mb_per_s")
    verdict("CONNECT >= 0.9x no proxy", None if c is None or b is None else c >= 0.9 * b,
            f"{num(c)} vs 0.9 x {num(b)} MB/s")
    s = dig(pd, "slow_plain", "rss", "growth_kib")
    verdict("slow-reader RSS growth < 2 MiB (plain)", None if s is None else s < 2048,
            f"{num(mib(s), '{:+.1f}')} MiB")
    s = dig(pd, "slow_tunnel", "rss", "growth_kib")
    verdict("slow-reader RSS growth < 2 MiB (tunnel)", None if s is None else s < 2048,
            f"{num(mib(s), '{:+.1f}')} MiB")
    s = pd.get("rss_start_kib")
    verdict("idle RSS < 40 MiB", None if s is None else s < 40 * 1024, f"{num(mib(s), '{:.1f}')} MiB")
    return verdict


# --------------------------------------------------------------------- main

def parse_args(argv):
    ap = benchlib.arg_parser("bench/run.sh", __doc__)
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES),
                    help=f"comma-separated, from {','.join(ALL_PROXIES)}")
    ap.add_argument("--measure", "--only", dest="measure", default=",".join(ALL_MEASURES),
                    help=f"comma-separated, from {','.join(ALL_MEASURES)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 run of 2 s per concurrency, 1 CONNECT download, 5 s slow reader")
    ap.add_argument("--interleave", action="store_true",
                    help="start all proxies at once and take the req/s and CONNECT runs round-robin "
                         "(steadier ratios when other work shares the machine)")
    ap.add_argument("--runs", type=int, default=5, help="wrk runs per concurrency")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--concurrency", default="1,50", help="wrk connection counts")
    ap.add_argument("--connect-runs", type=int, default=3, help="CONNECT downloads")
    ap.add_argument("--connect-max-time", type=int, default=180, help="seconds allowed per CONNECT download")
    ap.add_argument("--slow-seconds", type=int, default=20, help="length of each 1 MB/s slow-reader download")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big file, MiB")
    benchlib.add_common_args(ap, 18900, "origin on this port, proxies on the next ones (127.0.0.1)",
                             "core for wrk, curl and the nginx origin",
                             "core for the nginx origin (default: --client-cpu; 'none' = not pinned)",
                             "do not apt-get or pip anything", proxyd_ref=True)
    a = benchlib.parse(ap, argv, ALL_PROXIES, ALL_MEASURES,
                       quick={"runs": 1, "duration": 2, "connect_runs": 1, "slow_seconds": 5},
                       ranges=(("runs", 1, 50), ("duration", 1, 120), ("connect_runs", 1, 20),
                               ("slow_seconds", 2, 300), ("big_mib", 1, 16384), ("connect_max_time", 5, 3600)),
                       numbers=(("concurrency", 1, 1000),))
    if not a.render and (os.cpu_count() or 1) < 2 and a.proxy_cpu == a.client_cpu:
        log("warning: one core only; proxy and load generator share it")
    return a


def main(argv=None):
    return benchlib.main(argv, parse_args, render, bench)


def bench(a, argv):
    started = benchlib.begin(PROCS, WORK, RESULTS)
    stamp = started.strftime("%Y%m%d-%H%M%S")

    need = {"curl", "taskset"}
    if {"rps", "connect", "rss"} & set(a.measure) and [p for p in a.proxies]:
        need |= {"nginx", "wrk"}
    need |= {p for p in a.proxies if p in ("tinyproxy", "squid")}
    benchlib.ensure_debian(sorted(need), a.no_install, DEBIAN_PACKAGES)

    origin_port = a.port_base
    proxies = benchlib.make_proxies(PROXY_CLASSES, a, WORK, origin_port)

    results = benchlib.new_results(
        started, "bench/run.sh", argv, a,
        "proxies measure runs duration concurrency connect_runs slow_seconds big_mib proxy_cpu client_cpu "
        "origin_cpu quick origin_port interleave", "nginx wrk curl",
        proxyd_git=next((px.git for px in proxies if px.name == "proxyd"), None))
    out_json = RESULTS / f"bench-{stamp}.json"
    save = benchlib.saver(results, out_json)

    if "parsers" in a.measure:
        log("parsers: h11 vs httptools")
        try:
            results["parsers"] = run_parsers(a)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            results["parsers"] = None
            log(f"parsers failed: {e}")
        save()

    if {"rps", "connect", "rss"} & set(a.measure) and proxies:
        big_size = benchlib.prepare_www(WORK, a.big_mib, b"proxyd bench small response body.\n")
        start_origin(origin_port, a.origin_cpu)
        if a.interleave:
            bench_interleaved(a, proxies, big_size, results, save)
        else:
            bench_in_turn(a, proxies, big_size, results, save)
        PROCS.stop_all()

    rc = benchlib.finish(results, out_json, render)
    bad = [n for n, r in results["proxies"].items() if r.get("metrics_error")]
    if bad:
        log(f"!!! {', '.join(bad)}: the /metrics check failed (see above); exit 3")
        return 3
    return rc

if __name__ == "__main__":
    sys.exit(main())
