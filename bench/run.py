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

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
LUA = BENCH / "wrk-proxy.lua"
LOOPBACK = "127.0.0.1"

ALL_PROXIES = ["baseline", "proxyd", "proxyd-headers", "tinyproxy", "squid", "mitmdump", "proxypy"]
# proxyd with the bundled headers plugin on (one request and one response
# header set): what a head-only plugin costs.  Target: >= 0.8 of plain proxyd.
HEADERS_PLUGIN = "headers:set-request=X-Bench:1,set-response=X-Proxied:1"
ALL_MEASURES = ["parsers", "rps", "connect", "rss"]
DEBIAN_PACKAGES = {  # binary -> Debian package (bookworm names, checked with apt-cache policy)
    "nginx": "nginx",
    "wrk": "wrk",
    "curl": "curl",
    "taskset": "util-linux",
    "tinyproxy": "tinyproxy",
    "squid": "squid",
}
SMALL_SIZE = 1024

# Targets for proxyd from issue 3 ("How it is checked").
TARGETS = """\
rps c=50 >= proxy.py's, and >= 5x mitmdump's; CONNECT >= 0.9x no-proxy MB/s;
slow-reader RSS growth < 2 MiB; idle RSS < 40 MiB"""


import benchlib  # noqa: E402  (bench/ is on sys.path when run as a script)
from benchlib import (  # noqa: E402
    Procs, RssSampler, cpu_seconds, deb_version, log, pip_version, port_free, rss_kib, run,
    wait_port,
)

benchlib.LABEL = 'bench'


def ensure_debian(binaries, no_install):
    return benchlib.ensure_debian(binaries, no_install, DEBIAN_PACKAGES)


def venv(name, python, packages, upgrade=False):
    return benchlib.venv(WORK, name, python, packages, upgrade)


# ---------------------------------------------------------------- processes


PROCS = Procs()


def _on_signal(signum, frame):
    raise SystemExit(f"bench: signal {signum}, stopping")


# ---------------------------------------------------------------------- RSS


# ------------------------------------------------------------------ install


def proxyd_source(src, ref):
    """Copy of the proxyd tree to install from, so nothing is built inside the repo.

    Without ref: the work tree as it is (tracked and untracked-but-not-ignored files).
    With ref: `git archive REF`.
    """
    dst = WORK / "proxyd-src"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if ref:
        arch = run(["git", "-C", src, "archive", "--format=tar", ref], timeout=120, quiet=True).stdout
        subprocess.run(["tar", "-x", "-C", dst], input=arch, check=True, timeout=120)
    else:
        files = run(["git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                    timeout=60, quiet=True).stdout.split(b"\0")
        for f in files:
            if not f:
                continue
            rel = f.decode()
            if rel.startswith("bench/"):
                continue
            s, d = Path(src) / rel, dst / rel
            if s.is_file():
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, d)
    return dst


def git_info(src, ref=None):
    """Which proxyd is measured: a commit (--proxyd-ref) or the work tree at HEAD plus its changes."""
    def g(*a):
        p = subprocess.run(["git", "-C", str(src)] + list(a), capture_output=True, timeout=30)
        return p.stdout.decode().strip() if p.returncode == 0 else None
    rev = ref or "HEAD"
    info = {"commit": g("rev-parse", f"{rev}^{{commit}}"), "subject": g("log", "-1", "--format=%s", rev),
            "date": g("log", "-1", "--format=%cI", rev),
            "branch": ref if ref else g("rev-parse", "--abbrev-ref", "HEAD"),
            "source": f"git archive {ref}" if ref else "work tree"}
    if ref:
        info["dirty_files_outside_bench"] = info["untracked_files_outside_bench"] = 0
        return info
    status = g("status", "--porcelain", "--untracked-files=no") or ""
    dirty = [l for l in status.splitlines() if not l[3:].startswith("bench/")]
    untracked = (g("ls-files", "--others", "--exclude-standard") or "").splitlines()
    untracked = [f for f in untracked if not f.startswith("bench/")]
    info["dirty_files_outside_bench"] = len(dirty)
    info["untracked_files_outside_bench"] = len(untracked)
    return info


def install_proxyd(python, src, ref):
    d = venv("proxyd", python, ["h11", "httptools", "wheel"])
    tree = proxyd_source(src, ref)
    # deps once (cached), then the tree itself every run so the bench measures what is there now
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", tree], timeout=1800)
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--force-reinstall", tree], timeout=600)
    return d


# ------------------------------------------------------------------- origin

def prepare_origin(big_mib):
    www = WORK / "www"
    www.mkdir(parents=True, exist_ok=True)
    small = www / "small"
    if not small.exists() or small.stat().st_size != SMALL_SIZE:
        small.write_bytes((b"proxyd bench small response body.\n" * 64)[:SMALL_SIZE - 1] + b"\n")
    big = www / "big"
    size = big_mib * 1024 * 1024
    if not big.exists() or big.stat().st_size != size:
        log(f"generating {big} ({big_mib} MiB, once)")
        tmp = big.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1024 * 1024))
        tmp.rename(big)
    for p in (WORK, www):
        p.chmod(0o755)
    small.chmod(0o644)
    big.chmod(0o644)
    return size


def start_origin(port, cpu):
    d = WORK / "nginx"
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(f"""\
# origin for proxyd bench/run.py: loopback only, its own paths, no system config
{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 10000000;
    server {{
        listen {LOOPBACK}:{port};
        root {WORK}/www;
        location / {{ }}
    }}
}}
""")
    if not port_free(port):
        raise SystemExit(f"bench: origin port {port} is busy (use --port-base)")
    p = PROCS.start("nginx", ["nginx", "-p", f"{d}/", "-e", d / "error.log", "-c", conf], cpu=cpu,
                    logfile=d / "stdout.log")
    if not wait_port(port, p, 20):
        raise SystemExit(f"bench: nginx did not start; see {d}/error.log")
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    c.request("GET", "/small")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or len(body) != SMALL_SIZE:
        raise SystemExit(f"bench: origin answered {r.status} with {len(body)} bytes")
    return p


# ------------------------------------------------------------------ proxies

class Proxy:
    """How to install, configure and start one proxy."""

    name = "?"
    label = "?"

    def __init__(self, args, port, origin_port):
        self.args, self.port, self.origin_port = args, port, origin_port
        self.dir = WORK / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = None
        self.flags = ""

    def install(self):
        pass

    def argv(self):
        raise NotImplementedError

    def env(self):
        return None

    def prepare(self):
        pass


class Baseline(Proxy):
    name, label = "baseline", "no proxy"


class Proxyd(Proxy):
    name, label = "proxyd", "proxyd"

    def install(self):
        self.git = git_info(self.args.proxyd_src, self.args.proxyd_ref)
        self.venv = install_proxyd(self.args.python, self.args.proxyd_src, self.args.proxyd_ref)
        (self.venv / ".proxyd-source.json").write_text(json.dumps(self.git))
        self.version = pip_version(self.venv, "proxyd")
        if self.git["commit"]:
            self.version = f"{self.version} @{self.git['commit'][:10]}"

    def argv(self):
        extra = shlex.split(self.args.proxyd_args or "")
        a = [self.venv / "bin" / "twistd", "-n", "--pidfile=", "proxyd",
             "--listen", f"tcp:{self.port}:interface={LOOPBACK}", "--connect-ports", "*"] + extra
        self.flags = " ".join(str(x) for x in a[1:])
        return a


class ProxydHeaders(Proxyd):
    name, label = "proxyd-headers", "proxyd+headers"

    def argv(self):
        a = Proxyd.argv(self) + ["--plugin", HEADERS_PLUGIN]
        self.flags = " ".join(str(x) for x in a[1:])
        return a


class Tinyproxy(Proxy):
    name, label = "tinyproxy", "tinyproxy"

    def install(self):
        self.version = deb_version("tinyproxy")

    def prepare(self):
        conf = self.dir / "tinyproxy.conf"
        conf.write_text(f"""\
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
""")
        self.conf = conf

    def argv(self):
        self.flags = f"-d -c {self.conf.name} (Port, Listen, Allow 127.0.0.1, ConnectPort origin, LogLevel Warning)"
        return ["tinyproxy", "-d", "-c", self.conf]


class Squid(Proxy):
    name, label = "squid", "squid"

    def install(self):
        self.version = deb_version("squid")

    def prepare(self):
        conf = self.dir / "squid.conf"
        conf.write_text(f"""\
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
""")
        self.conf = conf
        if os.geteuid() == 0:
            # squid refuses to run as root; it drops to its cache_effective_user ("proxy")
            shutil.chown(self.dir, "proxy", "proxy")
            for f in self.dir.iterdir():
                shutil.chown(f, "proxy", "proxy")

    def argv(self):
        self.flags = f"-N -f {self.conf.name} (http_port 127.0.0.1, allow localhost, CONNECT to origin port, cache deny all, access_log none)"
        return ["squid", "-N", "-f", self.conf]


class Mitmdump(Proxy):
    name, label = "mitmdump", "mitmdump"

    def install(self):
        self.venv = venv("mitmproxy", self.args.python, ["mitmproxy"], upgrade=self.args.upgrade)
        self.version = pip_version(self.venv, "mitmproxy")

    def env(self):
        (self.dir / "home").mkdir(exist_ok=True)
        return dict(os.environ, HOME=str(self.dir / "home"))

    def argv(self):
        # stream_large_bodies: without it mitmdump holds every body whole in memory
        # (a 1 GiB download = 1 GiB RSS); streaming is how it is run as a forward proxy.
        # ignore_hosts for the origin: the CONNECT tunnel is passed through blind, as
        # proxyd's, tinyproxy's and squid's are (mitmproxy would otherwise parse the
        # HTTP inside the tunnel).
        a = [self.venv / "bin" / "mitmdump", "--listen-host", LOOPBACK, "-p", self.port, "-q",
             "--set", f"confdir={self.dir}/confdir", "--set", "stream_large_bodies=1m",
             "--set", f"ignore_hosts=^{re.escape(LOOPBACK)}:{self.origin_port}$"]
        self.flags = " ".join(str(x) for x in a[1:])
        return a


class ProxyPy(Proxy):
    name, label = "proxypy", "proxy.py"

    def install(self):
        self.venv = venv("proxypy", self.args.python, ["proxy.py"], upgrade=self.args.upgrade)
        self.version = pip_version(self.venv, "proxy.py")

    def env(self):
        (self.dir / "home").mkdir(exist_ok=True)
        return dict(os.environ, HOME=str(self.dir / "home"))

    def argv(self):
        # One acceptor process (beside the main one) that also does the work (threadless,
        # local executor: the defaults), on the one pinned core like the others. No access log
        # lines (proxy.py logs every request at INFO).
        a = [self.venv / "bin" / "proxy", "--hostname", LOOPBACK, "--port", self.port,
             "--num-acceptors", "1", "--num-workers", "1", "--log-level", "WARNING",
             "--data-dir", self.dir / "data"]
        self.flags = " ".join(str(x) for x in a[1:])
        return a


PROXY_CLASSES = {c.name: c for c in (Baseline, Proxyd, ProxydHeaders, Tinyproxy, Squid, Mitmdump, ProxyPy)}


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


def curl_json(argv, timeout, cpu):
    p = run(["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{json}"] + argv, timeout=timeout,
            check=False, cpu=cpu, quiet=True)
    try:
        w = json.loads(p.stdout.decode() or "{}")
    except ValueError:
        w = {}
    return p.returncode, w, p.stderr.decode(errors="replace").strip()


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
    argv = ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "5s", "-s", LUA, url,
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


def _rotated(targets, i):
    """targets in a different order each round, so no proxy always runs first or last."""
    k = i % len(targets)
    return targets[k:] + targets[:k]


def measure_rps(a, targets):
    """targets: [(proxy, pid or None)]. Returns {proxy name: rps results}.

    With several targets the runs are interleaved: round i runs each target once,
    so bursts of other work on the machine fall on all of them alike."""
    out = {px.name: {} for px, _ in targets}
    for conc in a.concurrency:
        for px, pid in targets:
            # warm-up (connections made, caches warm), not counted
            wrk_once(a, px.port, px.origin_port, conc, 1, px.name == "baseline")
        runs = {px.name: [] for px, _ in targets}
        for i in range(a.runs):
            for px, pid in _rotated(targets, i):
                r = wrk_once(a, px.port, px.origin_port, conc, a.duration, px.name == "baseline", pid)
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
    for i in range(a.connect_runs):
        for px, pid in _rotated(targets, i):
            r = connect_once(a, px, pid, big_size)
            runs[px.name].append(r)
            log(f"{px.name} CONNECT run {i + 1}/{a.connect_runs}: "
                + (f"{r['mb_per_s']:.0f} MB/s" if r["valid"] else f"invalid ({r['error']})")
                + (f", RSS +{r['rss']['growth_kib'] / 1024:.1f} MiB" if r["rss"] else ""))
    out = {}
    for px, _ in targets:
        rs = runs[px.name]
        good = [r["mb_per_s"] for r in rs if r["valid"]]
        growth = [r["rss"]["growth_kib"] for r in rs if r["rss"]]
        out[px.name] = {"median_mb_per_s": statistics.median(good) if good else None,
                        "valid_runs": len(good),
                        "rss_growth_kib_max": max(growth) if growth else None, "runs": rs}
    return out


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
    if not port_free(px.port):
        res["error"] = f"port {px.port} busy"
        return None, res
    px.prepare()
    argv = px.argv()
    res["flags"] = px.flags
    if isinstance(px, Proxyd):
        res["git"] = px.git
    p = PROCS.start(px.name, argv, cpu=a.proxy_cpu, cwd=px.dir, env=px.env(), logfile=px.dir / "output.log")
    if not wait_port(px.port, p, a.start_timeout):
        res["error"] = (f"did not listen on {px.port} within {a.start_timeout} s (exit {p.poll()}); "
                        f"see {px.dir / 'output.log'}")
        log(f"{px.name}: {res['error']}")
        PROCS.stop(p)
        return None, res
    time.sleep(1.0)
    res["rss_start_kib"] = rss_kib(p.pid)
    ok, keepalive, detail = probe_plain(px.port, px.origin_port)
    res["plain_ok"], res["client_keepalive"] = ok, keepalive
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
        d = venv("proxyd", a.python, ["h11", "httptools", "wheel"])
    argv = [d / "bin" / "python", BENCH / "parsers.py", "--json", "-"] + (["--quick"] if a.quick else [])
    p = run(argv, timeout=900, cpu=a.proxy_cpu)
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


# ------------------------------------------------------------------- report

def _f(v, fmt="{:,.0f}", none="-"):
    return none if v is None else fmt.format(v)


def _mib(kib):
    return None if kib is None else kib / 1024


def _get(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


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
            row.append(_f(_get(r, "rps", f"c{c}", "median")))
        row.append(_f(_get(r, "rps", f"c{cmax}", "cpu_us_per_req_median")))
        row.append(_f(_get(r, "connect", "median_mb_per_s")))
        row.append(_f(_mib(r.get("rss_start_kib")), "{:.1f} MiB"))
        row.append(_f(_mib(_get(r, "connect", "rss_growth_kib_max")), "{:+.1f} MiB"))
        row.append(_f(_mib(_get(r, "slow_tunnel", "rss", "growth_kib")), "{:+.1f} MiB"))
        row.append(_f(_mib(_get(r, "slow_plain", "rss", "growth_kib")), "{:+.1f} MiB"))
        rows.append(row)
    lines += _table(hdr, rows)
    errs = [(P[n]["label"], P[n][k]) for n in names for k in ("error", "connect_error") if P[n].get(k)]
    for lab, e in errs:
        lines.append(f"  ! {lab}: {e}")
    inval = []
    for n in names:
        for c in concs:
            v = _get(P[n], "rps", f"c{c}")
            if v and v["valid_runs"] < len(v["runs"]):
                bad = [r.get("error") for r in v["runs"] if not r.get("valid")]
                inval.append(f"  ! {P[n]['label']} c={c}: {len(bad)} invalid run(s): {bad[0]}")
        v = P[n].get("connect")
        if v and v["valid_runs"] < len(v["runs"]):
            bad = [r.get("error") for r in v["runs"] if not r.get("valid")]
            inval.append(f"  ! {P[n]['label']} CONNECT: {len(bad)} invalid run(s): {bad[0]}")
    lines += inval

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
                row.append(_ratio(_get(P[n], "rps", f"c{c}", "median"), _get(base, "rps", f"c{c}", "median")))
            row.append(_ratio(_get(P[n], "connect", "median_mb_per_s"), _get(base, "connect", "median_mb_per_s")))
            rows2.append(row)
        lines += _table(hdr2, rows2)
    pd = P.get("proxyd")
    ph = P.get("proxyd-headers")
    if pd and ph:
        lines.append("")
        cells = ["req/s c={}: {}".format(c, _ratio(_get(ph, "rps", f"c{c}", "median"), _get(pd, "rps", f"c{c}", "median")))
                 for c in concs]
        lines.append("plugin cost (proxyd+headers / proxyd; target >= 0.8): " + ", ".join(cells))
    if pd and [n for n in names if n not in ("baseline", "proxyd", "proxyd-headers")]:
        lines.append("")
        lines.append("proxyd relative to each peer (proxyd / peer; RSS: proxyd minus peer):")
        hdr3 = (["peer"] + [f"req/s c={c}" for c in concs] + [f"CPU/req c={max(concs)} (peer/proxyd)"]
                + ["CONNECT MB/s", "idle RSS", "dRSS slow plain"])
        rows3 = []
        for n in names:
            if n in ("baseline", "proxyd", "proxyd-headers"):
                continue
            row = [P[n]["label"]]
            for c in concs:
                row.append(_ratio(_get(pd, "rps", f"c{c}", "median"), _get(P[n], "rps", f"c{c}", "median")))
            k = f"c{max(concs)}"
            row.append(_ratio(_get(P[n], "rps", k, "cpu_us_per_req_median"), _get(pd, "rps", k, "cpu_us_per_req_median")))
            row.append(_ratio(_get(pd, "connect", "median_mb_per_s"), _get(P[n], "connect", "median_mb_per_s")))
            a, b = pd.get("rss_start_kib"), P[n].get("rss_start_kib")
            row.append("-" if a is None or b is None else f"{(a - b) / 1024:+.1f} MiB")
            a, b = _get(pd, "slow_plain", "rss", "growth_kib"), _get(P[n], "slow_plain", "rss", "growth_kib")
            row.append("-" if a is None or b is None else f"{(a - b) / 1024:+.1f} MiB")
            rows3.append(row)
        lines += _table(hdr3, rows3)
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
        v = _get(P[n], "rps", f"c{max(concs)}")
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


def _ratio(a, b):
    if a is None or b is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _table(hdr, rows):
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)] if rows else [len(h) for h in hdr]
    fmt = lambda r: "  ".join(str(x).rjust(w[i]) if i > 0 else str(x).ljust(w[i]) for i, x in enumerate(r))
    return [fmt(hdr), fmt(["-" * x for x in w])] + [fmt(r) for r in rows]


def check_targets(results):
    P = results["proxies"]
    pd = P["proxyd"]
    out = []

    def verdict(name, ok, detail):
        out.append(f"{'-' if ok is None else ('met ' if ok else 'MISS')}  {name}: {detail}")

    v, pp, mm = (_get(pd, "rps", "c50", "median"), _get(P, "proxypy", "rps", "c50", "median"),
                 _get(P, "mitmdump", "rps", "c50", "median"))
    verdict("req/s c=50 >= proxy.py", None if v is None or pp is None else v >= pp,
            f"{_f(v)} vs {_f(pp)}")
    cv, cp = _get(pd, "rps", "c50", "cpu_us_per_req_median"), _get(P, "proxypy", "rps", "c50", "cpu_us_per_req_median")
    verdict("CPU per request c=50 <= proxy.py's (the same target, free of core sharing)",
            None if cv is None or cp is None else cv <= cp, f"{_f(cv)} vs {_f(cp)} us")
    verdict("req/s c=50 >= 5x mitmdump", None if v is None or mm is None else v >= 5 * mm,
            f"{_f(v)} vs 5 x {_f(mm)}")
    c, b = _get(pd, "connect", "median_mb_per_s"), _get(P, "baseline", "connect", "median_mb_per_s")
    verdict("CONNECT >= 0.9x no proxy", None if c is None or b is None else c >= 0.9 * b,
            f"{_f(c)} vs 0.9 x {_f(b)} MB/s")
    s = _get(pd, "slow_plain", "rss", "growth_kib")
    verdict("slow-reader RSS growth < 2 MiB (plain)", None if s is None else s < 2048,
            f"{_f(_mib(s), '{:+.1f}')} MiB")
    s = _get(pd, "slow_tunnel", "rss", "growth_kib")
    verdict("slow-reader RSS growth < 2 MiB (tunnel)", None if s is None else s < 2048,
            f"{_f(_mib(s), '{:+.1f}')} MiB")
    s = pd.get("rss_start_kib")
    verdict("idle RSS < 40 MiB", None if s is None else s < 40 * 1024, f"{_f(_mib(s), '{:.1f}')} MiB")
    return out


# --------------------------------------------------------------------- main

def host_info():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    ap.add_argument("--port-base", type=int, default=18900,
                    help="origin on this port, proxies on the next ones (127.0.0.1)")
    ap.add_argument("--proxy-cpu", type=int, default=1, help="core every proxy is pinned to")
    ap.add_argument("--client-cpu", type=int, default=0, help="core for wrk, curl and the nginx origin")
    ap.add_argument("--origin-cpu", default=None,
                    help="core for the nginx origin (default: --client-cpu; 'none' = not pinned)")
    ap.add_argument("--start-timeout", type=int, default=60, help="seconds a proxy may take to listen")
    ap.add_argument("--python", default=sys.executable, help="Python used to make the venvs")
    ap.add_argument("--proxyd-src", default=str(REPO), help="proxyd work tree to install")
    ap.add_argument("--proxyd-ref", default=None,
                    help="install this git commit of --proxyd-src instead of its work tree")
    ap.add_argument("--proxyd-args", default="", help="extra arguments for `twistd proxyd`")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get or pip anything")
    ap.add_argument("--upgrade", action="store_true", help="re-run pip install in the peers' venvs")
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved results file")
    a = ap.parse_args(argv)
    if a.render:
        return a
    a.proxies = [p.strip() for p in a.proxies.split(",") if p.strip()]
    a.measure = [m.strip() for m in a.measure.split(",") if m.strip()]
    bad = [p for p in a.proxies if p not in ALL_PROXIES] + [m for m in a.measure if m not in ALL_MEASURES]
    if bad:
        ap.error(f"unknown proxy or measurement: {', '.join(bad)}")
    a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    if a.quick:
        a.runs, a.duration, a.connect_runs, a.slow_seconds = 1, 2, 1, 5
    for name, lo, hi in (("runs", 1, 50), ("duration", 1, 120), ("connect_runs", 1, 20),
                         ("slow_seconds", 2, 300), ("big_mib", 1, 16384), ("connect_max_time", 5, 3600)):
        if not lo <= getattr(a, name) <= hi:
            ap.error(f"--{name.replace('_', '-')} must be {lo}..{hi}")
    if not a.concurrency or any(not 1 <= c <= 1000 for c in a.concurrency):
        ap.error("--concurrency: numbers 1..1000")
    if a.origin_cpu is None:
        a.origin_cpu = a.client_cpu
    elif a.origin_cpu == "none":
        a.origin_cpu = None
    else:
        try:
            a.origin_cpu = int(a.origin_cpu)
        except ValueError:
            ap.error("--origin-cpu: a core number or 'none'")
    if (os.cpu_count() or 1) < 2 and a.proxy_cpu == a.client_cpu:
        log("warning: one core only; proxy and load generator share it")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    atexit.register(PROCS.stop_all)
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")

    need = {"curl", "taskset"}
    if {"rps", "connect", "rss"} & set(a.measure) and [p for p in a.proxies]:
        need |= {"nginx", "wrk"}
    need |= {p for p in a.proxies if p in ("tinyproxy", "squid")}
    ensure_debian(sorted(need), a.no_install)

    origin_port = a.port_base
    proxies = []
    for i, name in enumerate(a.proxies):
        px = PROXY_CLASSES[name](a, a.port_base + 1 + i, origin_port)
        if not a.no_install or name in ("baseline", "tinyproxy", "squid"):
            px.install()
        else:
            px.venv = WORK / {"proxyd": "venv-proxyd", "proxyd-headers": "venv-proxyd",
                              "mitmdump": "venv-mitmproxy", "proxypy": "venv-proxypy"}[name]
            if not (px.venv / "bin" / "python").exists():
                raise SystemExit(f"bench: {px.venv} missing and --no-install given")
            px.version = pip_version(px.venv, {"proxyd": "proxyd", "proxyd-headers": "proxyd", "mitmdump": "mitmproxy",
                                               "proxypy": "proxy.py"}[name])
            if name == "proxyd":
                # what the last install put there, not what the tree holds now
                mark = px.venv / ".proxyd-source.json"
                px.git = json.loads(mark.read_text()) if mark.exists() else {"commit": None}
                if px.git.get("commit"):
                    px.version = f"{px.version} @{px.git['commit'][:10]}"
        proxies.append(px)

    results = {"meta": {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(x) for x in ["bench/run.sh"] + (sys.argv[1:] if argv is None else argv)),
        "host": host_info(),
        "options": {"proxies": a.proxies, "measure": a.measure, "runs": a.runs, "duration": a.duration,
                    "concurrency": a.concurrency, "connect_runs": a.connect_runs,
                    "slow_seconds": a.slow_seconds, "big_mib": a.big_mib, "proxy_cpu": a.proxy_cpu,
                    "client_cpu": a.client_cpu, "origin_cpu": a.origin_cpu, "quick": a.quick, "origin_port": origin_port,
                    "interleave": a.interleave},
        "versions": {"nginx": deb_version("nginx-core") or deb_version("nginx-light") or deb_version("nginx"),
                     "wrk": deb_version("wrk"), "curl": deb_version("curl")},
        "proxyd_git": next((px.git for px in proxies if px.name == "proxyd"), None),
    }, "proxies": {}}
    out_json = RESULTS / f"bench-{stamp}.json"

    def save():
        out_json.write_text(json.dumps(results, indent=1))

    if "parsers" in a.measure:
        log("parsers: h11 vs httptools")
        try:
            results["parsers"] = run_parsers(a)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            results["parsers"] = None
            log(f"parsers failed: {e}")
        save()

    if {"rps", "connect", "rss"} & set(a.measure) and proxies:
        big_size = prepare_origin(a.big_mib)
        start_origin(origin_port, a.origin_cpu)
        if a.interleave:
            bench_interleaved(a, proxies, big_size, results, save)
        else:
            bench_in_turn(a, proxies, big_size, results, save)
        PROCS.stop_all()

    results["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    save()
    table = render(results)
    (RESULTS / f"bench-{stamp}.txt").write_text(table + "\n")
    print(table)
    log(f"raw results: {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
