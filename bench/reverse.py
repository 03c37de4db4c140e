#!/usr/bin/env python3
"""proxyd --mode reverse against nginx, haproxy and mitmdump: TLS-terminating reverse proxies in front of one loopback HTTP backend.

Run it with bench/reverse.sh (see "reverse.sh" in bench/README.md). In one run
it installs what it needs (Debian nginx, haproxy, wrk, curl, openssl, gcc with
apt-get if missing; venvs under bench/.work/reverse with pip), makes a
throwaway CA and an ECDSA P-256 certificate for localhost / 127.0.0.1 with
openssl, starts one plain-HTTP nginx backend on 127.0.0.1 and every reverse
proxy in front of it (each pinned to one core, all up at once), then measures,
in interleaved rounds:

  rps         HTTPS keep-alive requests/s, wrk -t1 -c50 GET /small (1 KiB),
              and the proxy's own CPU time per request
  handshakes  new TLS connections/s: a full handshake and one GET /small with
              `Connection: close` per connection, wrk -t1 -c10; wrk would
              resume TLS sessions on its own, so it runs with a small
              LD_PRELOAD library that drops the session before every reconnect
              and counts full and resumed handshakes (a run with one resumed
              handshake is invalid)
  download    MB/s of a 1 GiB download through the proxy (curl --http1.1,
              --max-time bounded), and the proxy's CPU time per MB
  resumed     (not by default) new connections/s as wrk makes them on its
              own, resuming the session: for comparison with plain-wrk figures

The no-proxy row is wrk/curl straight at the backend over plain HTTP: a
ceiling, not a TLS figure. Raw results go to bench/results/reverse-*.json, the
printed table to bench/results/reverse-*.txt.

Not part of the test suite. Loopback only: every socket is on 127.0.0.1. Every
process it starts is stopped on exit, Ctrl-C, SIGTERM and SIGHUP; every loop and
wait is bounded in count and time.
"""

import hashlib
import http.client
import json
import os
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time

import benchlib  # bench/ is on sys.path when run as a script
from benchlib import (
    BENCH, LOOPBACK, RESULTS, SMALL_SIZE, Procs, RssSampler, cpu_seconds, dig, log, mib, num, ratio, rss_kib,
    run, table,
)

WORK = BENCH / ".work" / "reverse"
HOSTNAME = "localhost"     # the certificate's name (SAN DNS:localhost and IP:127.0.0.1)

ALL_PROXIES = ["baseline", "proxyd", "nginx", "haproxy", "mitmdump"]
ALL_MEASURES = ["rps", "handshakes", "download", "resumed"]
DEFAULT_MEASURES = ["rps", "handshakes", "download"]
DEBIAN_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "curl": "curl",
                   "openssl": "openssl", "taskset": "util-linux", "gcc": "gcc"}

# Targets for proxyd from the reverse-proxy issue ("How it is checked", bench/).
TARGETS = ("keep-alive req/s >= 8x mitmdump's; new TLS handshakes/s >= 2x mitmdump's; "
           "download MB/s >= 0.5x nginx's")
# What the issue says the peers measure on this machine, for comparison.
ISSUE_FIGURES = ("nginx ~71,000 and mitmdump ~1,000 keep-alive req/s; "
                 "nginx ~1,140 and mitmdump ~300 handshakes/s")

benchlib.LABEL = "reverse bench"
PROCS = Procs()


# ------------------------------------------------------------------ wrk
#
# wrk (4.1) closes a connection with SSL_shutdown + SSL_clear and connects again
# with the same SSL object, which keeps the session: every reconnect after the
# first is a resumed handshake (ticket or session id) whenever the server allows
# it (nginx, haproxy and OpenSSL-based servers do by default). fullhs.so, loaded
# with LD_PRELOAD, drops the session after SSL_clear (SSL_set_session(s, NULL))
# so every connection does a full handshake, and counts the handshakes that
# completed, full and resumed, into $FULLHS_OUT when wrk exits. With
# FULLHS_KEEP_SESSIONS set it only counts: wrk's own behaviour.
# No #include: it builds with gcc alone (no libc6-dev); every symbol it uses
# comes from libc and libssl, already loaded in wrk.

SHIM_C = r"""
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern void *dlsym(void *handle, const char *symbol);
extern char *getenv(const char *name);
extern void *fopen(const char *path, const char *mode);
extern int fprintf(void *stream, const char *format, ...);
extern int fclose(void *stream);
#define RTLD_NEXT ((void *) -1l)

static int (*real_clear)(SSL *);
static int (*real_connect)(SSL *);
static int (*set_session)(SSL *, SSL_SESSION *);
static int (*session_reused)(const SSL *);
static unsigned long n_full, n_resumed;
static int keep;

__attribute__((constructor)) static void fullhs_init(void) {
    real_clear = (int (*)(SSL *)) dlsym(RTLD_NEXT, "SSL_clear");
    real_connect = (int (*)(SSL *)) dlsym(RTLD_NEXT, "SSL_connect");
    set_session = (int (*)(SSL *, SSL_SESSION *)) dlsym(RTLD_NEXT, "SSL_set_session");
    session_reused = (int (*)(const SSL *)) dlsym(RTLD_NEXT, "SSL_session_reused");
    keep = getenv("FULLHS_KEEP_SESSIONS") != 0;
}

int SSL_clear(SSL *s) {
    int r = real_clear(s);
    if (!keep)
        set_session(s, 0);      /* no session: the next SSL_connect is a full handshake */
    return r;
}

int SSL_connect(SSL *s) {
    int r = real_connect(s);
    if (r == 1)
        __atomic_add_fetch(session_reused(s) ? &n_resumed : &n_full, 1, __ATOMIC_RELAXED);
    return r;
}

__attribute__((destructor)) static void fullhs_fini(void) {
    const char *out = getenv("FULLHS_OUT");
    void *f = out ? fopen(out, "w") : 0;
    if (f) {
        fprintf(f, "{\"full\": %lu, \"resumed\": %lu}\n", n_full, n_resumed);
        fclose(f);
    }
}
"""

# wrk's script: GET /small with Host: 127.0.0.1:PORT, optionally Connection: close
# (wrk -H headers are dropped once a script passes its own headers to wrk.format),
# then wrk-proxy.lua's done(): one BENCHJSON line of counts at the end.
WRK_LUA = r"""
local req

function init(args)
   local headers = { ["Host"] = args[2] }
   if args[3] == "close" then
      headers["Connection"] = "close"
   end
   req = wrk.format("GET", args[1], headers)
end

function request()
   return req
end

"""


def build_tools():
    """WORK/fullhs.so (compiled when its source changed) and WORK/wrk-reverse.lua."""
    src, so = WORK / "fullhs.c", WORK / "fullhs.so"
    if not so.exists() or not src.exists() or src.read_text() != SHIM_C:
        src.write_text(SHIM_C)
        run(["gcc", "-O2", "-shared", "-fPIC", "-nostdlib", "-o", so, src], timeout=120)
    lua = WORK / "wrk-reverse.lua"
    lua.write_text(WRK_LUA + benchlib.wrk_done_lua())
    return so, lua


# --------------------------------------------------------------- certificates

def openssl(*args, input=None):
    return run(["openssl"] + [str(a) for a in args], timeout=60, quiet=True, input=input)


def make_pki():
    """A throwaway CA (ECDSA P-256) and a leaf for localhost and 127.0.0.1 signed by it.

    Returns a dict of paths: ca, cert (the leaf: the chain every proxy sends), key,
    combined (leaf + key, for haproxy and mitmdump), and the leaf's SHA-256."""
    d = WORK / "pki"
    d.mkdir(parents=True, exist_ok=True)
    p = {"ca": d / "ca.pem", "ca_key": d / "ca.key", "cert": d / "localhost.pem", "key": d / "localhost.key",
         "combined": d / "localhost-combined.pem"}
    fresh = all(x.exists() for x in p.values()) and openssl(
        "x509", "-in", p["cert"], "-noout", "-checkend", str(7 * 86400)).returncode == 0
    if not fresh:
        log("making the throwaway CA and the localhost certificate (openssl, ECDSA P-256)")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", p["ca_key"], "-out", p["ca"], "-days", "90",
                "-subj", "/CN=proxyd bench throwaway reverse-proxy CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash")
        csr = d / "localhost.csr"
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", p["key"], "-out", csr, "-subj", f"/CN={HOSTNAME}")
        ext = d / "localhost.ext"
        ext.write_text(f"subjectAltName=DNS:{HOSTNAME},IP:{LOOPBACK}\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        openssl("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial",
                "-out", p["cert"], "-days", "60", "-sha256", "-extfile", ext)
        p["combined"].write_text(p["cert"].read_text() + p["key"].read_text())
        for k in ("ca_key", "key", "combined"):
            p[k].chmod(0o600)
    p["leaf_sha256"] = hashlib.sha256(ssl.PEM_cert_to_DER_cert(p["cert"].read_text())).hexdigest()
    return p


# ------------------------------------------------------------------- backend

def start_backend(port, cpu):
    """Plain-HTTP nginx on 127.0.0.1:PORT serving /small and /big, its files under WORK/backend."""
    p = benchlib.start_nginx(PROCS, WORK / "backend", port, cpu,
                             "HTTP backend for proxyd bench/reverse.py: loopback only, its own paths, "
                             "no system config", tcp_nopush=True)
    benchlib.check_small(port, "backend")
    return p


# ------------------------------------------------------------------ proxies
#
# Each is constructed as cls(WORK, args, port, backend_port, pki) and listens with
# TLS on 127.0.0.1:port (the baseline: the backend itself, plain HTTP).

class Reverse:
    scheme = "https"

    def __init__(self, work, args, port, backend_port, pki):
        super().__init__(work, args, port, backend_port)
        self.pki = pki
        self.backend = f"http://{LOOPBACK}:{backend_port}"


class Baseline(Reverse, benchlib.Proxy):
    name, label = "baseline", "no proxy (HTTP)"
    scheme = "http"

    def __init__(self, *a):
        super().__init__(*a)
        self.port = self.origin_port


class Proxyd(Reverse, benchlib.Proxyd):
    """`twistd -n --pidfile= proxyd --mode=reverse --listen tcp:PORT:interface=127.0.0.1
    --tls-cert CERT --tls-key KEY --upstream http://127.0.0.1:BACKEND` (+ --proxyd-args)."""

    def command(self):
        return [self.venv / "bin" / "twistd", "-n", "--pidfile=", "proxyd", "--mode=reverse",
                "--listen", f"tcp:{self.port}:interface={LOOPBACK}",
                "--tls-cert", self.pki["cert"], "--tls-key", self.pki["key"], "--upstream", self.backend]


class DebianProxy(Reverse, benchlib.DebianProxy):
    """A reverse proxy from its Debian package: head() + its config file (made by
    conf_text()), in the foreground; flags: those arguments and SUMMARY."""

    flags_conf_path = True


class Nginx(DebianProxy):
    name, label, package = "nginx", "nginx", "nginx"
    summary = ("worker_processes 1; listen 127.0.0.1:PORT ssl, TLSv1.2 TLSv1.3; proxy_pass to an upstream "
               "with keepalive 64, proxy_http_version 1.1, X-Forwarded-For/-Proto; proxy_max_temp_file_size 0; "
               "access_log off")

    def head(self):
        return ["nginx", "-p", f"{self.dir}/", "-e", self.dir / "error.log", "-c"]

    def conf_text(self):
        # ssl_protocols: nginx 1.22's default has no TLSv1.3 (1.23.4+ has); the others all offer it.
        # proxy_max_temp_file_size 0: a big response is relayed through the memory buffers, never
        # spooled to a temporary file (the other proxies stream too).
        return benchlib.nginx_conf(self.dir, "HTTPS reverse proxy for proxyd bench/reverse.py: loopback only, its own "
                                   "paths, no system config", "", f"""\
    upstream backend {{
        server {LOOPBACK}:{self.origin_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {LOOPBACK}:{self.port} ssl;
        server_name {HOSTNAME};
        ssl_certificate {self.pki['cert']};
        ssl_certificate_key {self.pki['key']};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_max_temp_file_size 0;
        }}
    }}
""")


class Haproxy(DebianProxy):
    name, label, package = "haproxy", "haproxy", "haproxy"
    summary = ("nbthread 1, mode http, bind 127.0.0.1:PORT ssl crt (leaf+key) ssl-min-ver TLSv1.2, "
               "option forwardfor, X-Forwarded-Proto, http-reuse always, no logging")

    def head(self):
        return ["haproxy", "-db", "-f"]

    def conf_text(self):
        return f"""\
# HTTPS reverse proxy for proxyd bench/reverse.py: loopback only, no logging
global
    nbthread 1
    maxconn 4096
    pidfile {self.dir}/haproxy.pid
defaults
    mode http
    option http-keep-alive
    timeout connect 10s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 65s
frontend fe
    bind {LOOPBACK}:{self.port} ssl crt {self.pki['combined']} ssl-min-ver TLSv1.2
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    http-reuse always
    server backend {LOOPBACK}:{self.origin_port} maxconn 1000
"""


class Mitmdump(Reverse, benchlib.Mitmdump):
    """benchlib's mitmdump (stream_large_bodies=1m) with --mode reverse:http://127.0.0.1:BACKEND
    --certs *=leaf+key: it serves our certificate for every name."""

    def options(self):
        return ["--mode", f"reverse:{self.backend}", "--certs", f"*={self.pki['combined']}"]


PROXY_CLASSES = {c.name: c for c in (Baseline, Proxyd, Nginx, Haproxy, Mitmdump)}


# -------------------------------------------------------------------- probes

def _client_ctx(pki):
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))   # only our CA, hostname checked
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with SNI and certificate check for `localhost` (what curl --resolve does)."""

    def connect(self):
        s = socket.create_connection((LOOPBACK, self.port), self.timeout)
        self.sock = self._context.wrap_socket(s, server_hostname=HOSTNAME)


def probe_http(px):
    """Two GET /small on one connection (TLS: SNI localhost, only our CA trusted).

    Returns a dict: ok, detail, keepalive, tls, cipher, alpn, leaf_sha256."""
    out = {"ok": False}
    try:
        if px.scheme == "https":
            c = _SniConnection(HOSTNAME, px.port, timeout=10, context=_client_ctx(px.pki))
        else:
            c = http.client.HTTPConnection(LOOPBACK, px.port, timeout=10)
        c.request("GET", "/small")
        r = c.getresponse()
        body = r.read()
        sock = c.sock
        if px.scheme == "https":
            out.update(tls=sock.version(), cipher=sock.cipher()[0], alpn=sock.selected_alpn_protocol(),
                       leaf_sha256=hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest())
        if r.status != 200 or len(body) != SMALL_SIZE:
            out["detail"] = f"status {r.status}, {len(body)} bytes"
            c.close()
            return out
        keep = not r.will_close
        if keep:
            try:
                c.request("GET", "/small")
                r2 = c.getresponse()
                keep = r2.status == 200 and len(r2.read()) == SMALL_SIZE and c.sock is sock
            except (OSError, http.client.HTTPException):
                keep = False
        c.close()
        out.update(ok=True, detail="ok", keepalive=keep)
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["detail"] = f"{type(e).__name__}: {e}"
    return out


def probe_wrk_leaf(px):
    """The leaf the proxy sends for SNI `127.0.0.1`, what wrk sends (its URL's host): SHA-256."""
    try:
        p = run(["openssl", "s_client", "-connect", f"{LOOPBACK}:{px.port}", "-servername", LOOPBACK],
                timeout=20, check=False, quiet=True, input=b"")
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", p.stdout.decode(errors="replace"),
                  re.S)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest() if m else None


# ---------------------------------------------------------------- measuring

def core_ticks():
    """/proc/stat per core: {cpu: (task, irq, steal, idle)} in clock ticks. task = user+nice+system;
    irq = irq+softirq (loopback TCP is mostly softirq, in nobody's /proc/PID/stat); steal = time the
    hypervisor gave this virtual core to someone else; idle = idle+iowait."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3:4].isdigit():
                    v = [int(x) for x in line.split()[1:9]]
                    out[int(line[3:line.index(" ")])] = (v[0] + v[1] + v[2], v[5] + v[6], v[7], v[3] + v[4])
    except (OSError, ValueError):
        pass
    return out


def core_shares(t0, t1, cores):
    """What each core of CORES ({role: cpu}) did between two core_ticks(): shares of task, irq,
    steal and idle time."""
    out = {}
    for role, c in cores.items():
        if c is None or c not in t0 or c not in t1:
            continue
        d = [b - a for a, b in zip(t0[c], t1[c])]
        tot = sum(d)
        if tot > 0:
            out[role] = {k: round(x / tot, 3) for k, x in zip(("task", "irq", "steal", "idle"), d)}
    return out


def wrk_once(a, tools, px, pid, backend_pid, conc, duration, close, keep_sessions=False):
    """One wrk run against px (keep-alive, or one request per connection with close).

    Records rate, error counts, TLS handshakes (full/resumed, from fullhs.so), the
    proxy's CPU time per request, and the share of core 0 wrk and the backend used."""
    so, lua = tools
    count = WORK / "wrk-handshakes.json"
    if count.exists():
        count.unlink()
    env = dict(os.environ, LD_PRELOAD=str(so), FULLHS_OUT=str(count))
    if keep_sessions:
        env["FULLHS_KEEP_SESSIONS"] = "1"
    url = f"{px.scheme}://{LOOPBACK}:{px.port}/"
    argv = (["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--timeout", "5s", "-s", lua, url, "--",
             "/small", f"{LOOPBACK}:{px.port}"] + (["close"] if close else []))
    load = os.getloadavg()[0]
    c0, b0 = (cpu_seconds(pid) if pid else None), cpu_seconds(backend_pid)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    k0 = core_ticks()
    t0 = time.monotonic()
    try:
        p = run(argv, timeout=duration + 60, check=False, cpu=a.client_cpu, env=env, quiet=True)
    except subprocess.TimeoutExpired:
        return {"valid": False, "error": "wrk did not finish in time"}
    wall = time.monotonic() - t0
    k1 = core_ticks()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proxy_cpu = cpu_seconds(pid) - c0 if pid else None
    backend_cpu = cpu_seconds(backend_pid) - b0
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = p.stdout.decode(errors="replace")
    m = re.search(r"^BENCHJSON (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        msg = " ".join((p.stderr or p.stdout).decode(errors="replace").split())
        return {"valid": False, "error": f"wrk exit {p.returncode}: {msg[-300:]}"}
    r = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6 if r["duration_us"] else float(duration)
    n = r["requests"]
    r["rate"] = n / secs
    r["loadavg"] = round(load, 2)
    r["cores"] = core_shares(k0, k1, {"proxy": a.proxy_cpu, "client": a.client_cpu})
    try:
        hs = json.loads(count.read_text())
    except (OSError, ValueError):
        hs = {"full": None, "resumed": None}
    r["handshakes_full"], r["handshakes_resumed"] = hs.get("full"), hs.get("resumed")
    r["proxy_cpu_s"] = proxy_cpu
    r["proxy_cpu_us_per_op"] = proxy_cpu / n * 1e6 if proxy_cpu is not None and n else None
    # the proxy's CPU over the run's wall time (wrk also connects and winds down around `secs`)
    r["proxy_cpu_share"] = proxy_cpu / wall if proxy_cpu is not None else None
    r["client_core_share"] = (wrk_cpu + backend_cpu) / wall
    r["wrk_cpu_us_per_op"] = wrk_cpu / n * 1e6 if n else None
    e = r["errors"]
    sock_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    problems = []
    if not n:
        problems.append("no responses")
    if e["status"]:
        problems.append(f"{e['status']} non-2xx/3xx responses")
    if sock_errors > conc + 0.01 * n:
        problems.append(f"{sock_errors} socket errors {e}")
    if n and r["bytes"] / n < SMALL_SIZE:
        problems.append(f"{r['bytes'] / n:.0f} bytes per response")
    if px.scheme == "https" and not keep_sessions:
        if hs.get("full") is None:
            problems.append("no handshake count from fullhs.so")
        elif hs["resumed"]:
            problems.append(f"{hs['resumed']} resumed TLS handshakes")
        elif close and hs["full"] < 0.95 * n:
            problems.append(f"{hs['full']} full handshakes for {n} requests")
    r["valid"] = not problems
    if problems:
        r["error"] = "; ".join(problems)
    return r


def median_cores(rs):
    """The median of each core share over runs RS (their "cores")."""
    out = {}
    for role in ("proxy", "client"):
        got = [r["cores"][role] for r in rs if role in (r.get("cores") or {})]
        if got:
            out[role] = {k: round(statistics.median(x[k] for x in got), 3) for k in got[0]}
    return out


class Target:
    """A proxy being measured: its process (None for the baseline) and results.

    Other sessions on the machine have been seen to SIGTERM a running twistd mid-run (its log
    says "Received SIGTERM" while the bench was only sending requests). ready() notices a proxy
    that has exited, records it in res["exits"] with the end of its log, and restarts it (at
    most a.max_restarts times in a run) when it exited 0 after a SIGTERM; a proxy that crashed
    stays down, reported."""

    def __init__(self, a, px, proc, res):
        self.a, self.px, self.proc, self.res = a, px, proc, res
        self.name = px.name
        self.restarts = 0
        self.down = False

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def ready(self, phase):
        """True if the proxy is up; "restarted" if it was just restarted; False if it is down."""
        if self.proc is None or self.proc.poll() is None:
            return True
        if self.down:
            return False
        px, code = self.px, self.proc.returncode
        why = _tail(px.dir / "output.log", 2)
        self.res.setdefault("exits", []).append(f"exited ({code}) {phase}: {why}")
        log(f"{px.name}: exited ({code}) {phase}: {why}")
        if code != 0 or "Received SIGTERM" not in why or self.restarts >= self.a.max_restarts:
            self.down = True
            return False
        self.restarts += 1
        res = {}
        p = benchlib.launch(PROCS, px, res, self.a.proxy_cpu, self.a.start_timeout)
        if p is None or not probe_http(px)["ok"]:
            self.res["exits"].append(f"restart failed: {res.get('error') or 'probe failed'}")
            if p is not None:
                PROCS.stop(p)
            self.down = True
            return False
        self.proc = p
        self.res["restarts"] = self.restarts
        log(f"{px.name}: restarted (pid {p.pid}), {self.restarts} of at most {self.a.max_restarts}")
        return "restarted"


def measure_wrk(a, tools, kind, targets, backend_pid):
    """kind rps (keep-alive, a.rps_concurrency), handshakes (a.hs_concurrency, Connection: close,
    full handshakes) or resumed (the same, wrk resuming sessions on its own). targets: [Target].
    Interleaved: round i runs every target once, rotated."""
    close = kind in ("handshakes", "resumed")
    keep = kind == "resumed"
    conc = a.hs_concurrency if close else a.rps_concurrency
    runs = {t.name: [] for t in targets}
    for t in targets:   # warm-up, not counted: connections, pools, caches
        if t.ready(f"before the {kind} runs"):
            wrk_once(a, tools, t.px, t.pid, backend_pid, conc, 1, close, keep)
    for i, t in benchlib.rounds(targets, a.runs):
        up = t.ready(f"during the {kind} runs")
        if not up:
            continue
        if up == "restarted":
            wrk_once(a, tools, t.px, t.pid, backend_pid, conc, 1, close, keep)   # warm-up again
        px = t.px
        r = wrk_once(a, tools, px, t.pid, backend_pid, conc, a.duration, close, keep)
        if not r["valid"] and t.proc is not None and t.proc.poll() is not None:
            r["error"] += " (the proxy exited during the run)"
        runs[px.name].append(r)
        log(f"{px.name} {kind} c={conc} run {i + 1}/{a.runs}: "
            + (f"{r['rate']:.0f}/s" if "rate" in r else "-")
            + (f", proxy CPU {r['proxy_cpu_us_per_op']:.0f} us/op share {r['proxy_cpu_share']:.2f}"
               if r.get("proxy_cpu_us_per_op") else "")
            + (f", client core {r['client_core_share']:.2f}" if "client_core_share" in r else "")
            + (f", handshakes {r['handshakes_full']} full {r['handshakes_resumed']} resumed"
               if px.scheme == "https" and "handshakes_full" in r else "")
            + ("" if r["valid"] else f" INVALID ({r['error']})"))

    def more(good):
        return {"handshakes_full": sum(r.get("handshakes_full") or 0 for r in good),
                "handshakes_resumed": sum(r.get("handshakes_resumed") or 0 for r in good),
                "requests": sum(r["requests"] for r in good), "cores": median_cores(good)}
    return {t.name: benchlib.rate_summary(runs[t.name], conc, ("proxy_cpu_us_per_op", "proxy_cpu_share",
                                                               "client_core_share", "wrk_cpu_us_per_op"), more)
            for t in targets}


def curl_download(a, px):
    if px.scheme == "https":
        return ["--cacert", str(px.pki["ca"]), "--resolve", f"{HOSTNAME}:{px.port}:{LOOPBACK}",
                f"https://{HOSTNAME}:{px.port}/big"]
    return [f"http://{LOOPBACK}:{px.port}/big"]


def measure_download(a, targets, big_size, backend_pid):
    runs = {t.name: [] for t in targets}
    gave_up = set()
    for i, t in benchlib.rounds(targets, a.dl_runs):
        if t.name in gave_up or not t.ready("during the downloads"):
            continue
        px, pid = t.px, t.pid
        c0, b0 = (cpu_seconds(pid) if pid else None), cpu_seconds(backend_pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        k0 = core_ticks()
        with RssSampler(pid) as s:
            rc, w, err = benchlib.curl_json(["--http1.1"] + curl_download(a, px)
                                            + ["--max-time", str(a.dl_max_time)],
                                            a.dl_max_time + 30, a.client_cpu)
        k1 = core_ticks()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = benchlib.download_record(rc, w, s.result(),
                                     cores=core_shares(k0, k1, {"proxy": a.proxy_cpu, "client": a.client_cpu}))
        size, secs = r["size"], r["time_total"]
        if secs >= 0.5:
            curl_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            r["proxy_cpu_s"] = cpu_seconds(pid) - c0 if pid else None
            r["proxy_cpu_share"] = r["proxy_cpu_s"] / secs if pid else None
            r["proxy_cpu_ms_per_mb"] = r["proxy_cpu_s"] * 1e3 / (size / 1e6) if pid and size else None
            r["client_core_share"] = (curl_cpu + cpu_seconds(backend_pid) - b0) / secs
        if benchlib.judge_download(r, err, big_size):
            gave_up.add(px.name)
        runs[px.name].append(r)
        benchlib.log_download(px.name, i, a.dl_runs, r)
    out = {}
    for t in targets:
        out[t.name] = benchlib.download_summary(runs[t.name], "proxy_cpu_share", "proxy_cpu_ms_per_mb",
                                                "client_core_share")
        out[t.name]["cores"] = median_cores([r for r in runs[t.name] if r["valid"]])
    return out


def idle_check(targets, phase):
    """benchlib.idle_check of the targets that are up."""
    return benchlib.idle_check({t.name: t.pid for t in targets if t.pid and t.proc.poll() is None}, phase)


def machine_busy(seconds=2.0):
    """Cores' worth of CPU used by tasks on this machine over SECONDS (task + irq over all cores;
    call it while the bench itself is idle: what it sees is other work)."""
    t0 = core_ticks()
    time.sleep(seconds)
    t1 = core_ticks()
    busy = 0.0
    for c in t1:
        if c in t0:
            d = [b - a for a, b in zip(t0[c], t1[c])]
            if sum(d):
                busy += (d[0] + d[1]) / sum(d)
    return round(busy, 2)


def wait_quiet(a):
    """Up to a.wait_quiet seconds for other work on the machine to drop under a.quiet_cores cores
    (checked every 2 s). Returns what the checks saw."""
    seen = []
    deadline = time.monotonic() + a.wait_quiet
    for _ in range(10000):
        busy = machine_busy()
        seen.append(busy)
        if busy <= a.quiet_cores or time.monotonic() >= deadline:
            break
        if len(seen) == 1:
            log(f"other work on the machine: {busy:.2f} cores busy; waiting up to {a.wait_quiet} s for it to "
                f"drop under {a.quiet_cores} (--wait-quiet)")
    if seen[-1] > a.quiet_cores:
        log(f"warning: starting with {seen[-1]:.2f} cores busy with other work: figures will be low, "
            "compare CPU per operation")
    elif len(seen) > 1:
        log(f"quiet after {len(seen) * 2} s ({seen[-1]:.2f} cores busy)")
    return {"busy_cores": seen, "waited_s": round(2.0 * (len(seen) - 1), 1)}


def _tail(path, n=3):
    """The last N lines of a log, or, if one of its last 50 says why the process stopped (a
    signal, an error), that one and those after it (N at most)."""
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()][-50:]
    except OSError:
        return ""
    why = [i for i, l in enumerate(lines) if re.search(r"Received SIG|Traceback|Error|error:", l)]
    start = why[-1] if why and len(lines) - why[-1] <= 20 else len(lines) - n
    return " | ".join(lines[max(0, start):][:n])[-400:]


def start_proxy(a, tools, px, backend_pid):
    """Start px, probe it (HTTP over TLS, the leaf wrk gets, wrk's own session resumption).
    Returns (Popen or None, results dict); a proxy that fails is stopped and reported."""
    res = {"label": px.label, "version": px.version, "port": px.port, "scheme": px.scheme,
           "loadavg_before": round(os.getloadavg()[0], 2)}
    if px.name == "baseline":
        res["flags"] = "wrk and curl straight to the backend, plain HTTP"
        res["probe"] = probe_http(px)
        res["ok"] = res["probe"]["ok"]
        return None, res
    res["ok"] = False
    p = benchlib.launch(PROCS, px, res, a.proxy_cpu, a.start_timeout)
    if p is None:
        tail = _tail(px.dir / "output.log")
        if tail:
            res["error"] += f": {tail}"
        return None, res
    pr = res["probe"] = probe_http(px)
    res["wrk_leaf_ok"] = probe_wrk_leaf(px) == px.pki["leaf_sha256"]
    ok = pr["ok"] and pr.get("leaf_sha256") == px.pki["leaf_sha256"] and res["wrk_leaf_ok"]
    if ok:
        # wrk alone, one connection, Connection: close, sessions kept: does it resume?
        r = wrk_once(a, tools, px, p.pid, backend_pid, 1, 1, True, keep_sessions=True)
        res["wrk_native"] = {k: r.get(k) for k in ("requests", "rate", "handshakes_full", "handshakes_resumed")}
    log(f"{px.name}: probe {pr['detail']}, {pr.get('tls')} {pr.get('cipher')}, keep-alive {pr.get('keepalive')}, "
        f"our leaf {pr.get('leaf_sha256') == px.pki['leaf_sha256']} (SNI localhost) {res['wrk_leaf_ok']} "
        f"(SNI 127.0.0.1), wrk alone: {dig(res, 'wrk_native', 'handshakes_resumed')} resumed of "
        f"{dig(res, 'wrk_native', 'requests')} connections; idle RSS {res['rss_start_kib'] / 1024:.1f} MiB")
    if not ok:
        res["error"] = (f"probe failed: {pr['detail']}" if not pr["ok"] else
                        "it does not send our certificate") + f"; see {px.dir}/output.log"
        PROCS.stop(p)
        return None, res
    res["ok"] = True
    return p, res


# ------------------------------------------------------------------- report

def render(results):
    m, o = results["meta"], results["meta"]["options"]
    P = results["proxies"]
    names = [n for n in ALL_PROXIES if n in P]
    L = [f"proxyd --mode reverse bench  {m['started']}  ({m['host']['cpu']}, {m['host']['cpus']} cores, "
         f"kernel {m['host']['kernel']}; proxies on core {o['proxy_cpu']}, wrk and curl on core {o['client_cpu']}, "
         + (f"backend nginx on core {o['origin_cpu']})" if o.get("origin_cpu") is not None else
            "backend nginx not pinned)")]
    L += benchlib.head_lines(m)
    ow = m.get("other_work")
    if ow:
        L.append(f"other work on the machine before measuring: {ow['busy_cores'][-1]:.2f} cores busy"
                 + (f" (waited {ow['waited_s']:.0f} s, first check {ow['busy_cores'][0]:.2f})" if ow["waited_s"] else ""))
    L.append(f"backend: nginx {m['versions'].get('nginx')} plain HTTP on 127.0.0.1:{o['origin_port']}, "
             f"/small = 1 KiB, /big = {o['big_mib']} MiB; proxies: TLS with one ECDSA P-256 leaf for "
             f"localhost/127.0.0.1 from a throwaway CA; wrk {m['versions'].get('wrk')} -t1 (median of "
             f"{o['runs']} x {o['duration']} s runs, interleaved, after a 1 s warm-up each); download: median "
             f"of {o['dl_runs']} curl --http1.1 runs (--max-time {o['dl_max_time']})")
    L.append("")
    rc, hc = o["rps_concurrency"], o["hs_concurrency"]
    resumed = any(P[n].get("hsr") for n in names)
    hdr = (["proxy", "version", "TLS", f"ka req/s c={rc}", "CPU us/req", f"handshakes/s c={hc}", "CPU us/hs"]
           + (["resumed conn/s", "CPU us/conn"] if resumed else [])
           + ["download MB/s", "CPU ms/MB", "dRSS download", "idle RSS"])
    rows = []
    for n in names:
        r = P[n]
        pr = r.get("probe") or {}
        rows.append([r["label"], (r.get("version") or "-")[:22],
                     (pr.get("tls") or "-").replace("TLSv", "") if r.get("scheme") == "https" else "-",
                     num(dig(r, "rps", "median")), num(dig(r, "rps", "proxy_cpu_us_per_op")),
                     num(dig(r, "hs", "median")), num(dig(r, "hs", "proxy_cpu_us_per_op"))]
                    + ([num(dig(r, "hsr", "median")), num(dig(r, "hsr", "proxy_cpu_us_per_op"))] if resumed else [])
                    + [num(dig(r, "dl", "median_mb_per_s")), num(dig(r, "dl", "proxy_cpu_ms_per_mb"), "{:.2f}"),
                       num(mib(dig(r, "dl", "rss_growth_kib_max")), "{:+.1f} MiB"),
                       num(mib(r.get("rss_start_kib")), "{:.1f} MiB")])
    L += table(hdr, rows)
    if resumed:
        L.append("  (resumed conn/s: wrk as it is, resuming the TLS session on every reconnect: an abbreviated "
                 "handshake, not a full one)")
    for n in names:
        r = P[n]
        if r.get("error"):
            L.append(f"  ! {r['label']}: {r['error']}")
        for e in r.get("exits") or ():
            L.append(f"  ! {r['label']} {e}" + (" (restarted)" if r.get("restarts") else ""))
        for k, what in (("rps", "keep-alive"), ("hs", "handshakes"), ("hsr", "resumed conn/s"), ("dl", "download")):
            L += benchlib.invalid_runs(r["label"], what, r.get(k))
    # every proxy relative to the others: proxyd's row first if it was measured
    tls = [n for n in names if n != "baseline" and (P[n].get("rps") or P[n].get("hs") or P[n].get("dl"))]
    ref = "proxyd" if "proxyd" in tls else ("nginx" if "nginx" in tls else None)
    peers = [n for n in tls if n != ref]
    if ref and peers:
        R = P[ref]
        L.append("")
        L.append(f"{R['label']} / peer (CPU columns: the peer's CPU per operation / {R['label']}'s; "
                 "over 1 = the peer costs more):")
        hdr2 = ["peer", "ka req/s", "CPU/req", "handshakes/s", "CPU/hs", "download MB/s", "CPU/MB"]
        rows2 = []
        for n in peers:
            r = P[n]
            rows2.append([r["label"],
                          ratio(dig(R, "rps", "median"), dig(r, "rps", "median")),
                          ratio(dig(r, "rps", "proxy_cpu_us_per_op"), dig(R, "rps", "proxy_cpu_us_per_op")),
                          ratio(dig(R, "hs", "median"), dig(r, "hs", "median")),
                          ratio(dig(r, "hs", "proxy_cpu_us_per_op"), dig(R, "hs", "proxy_cpu_us_per_op")),
                          ratio(dig(R, "dl", "median_mb_per_s"), dig(r, "dl", "median_mb_per_s")),
                          ratio(dig(r, "dl", "proxy_cpu_ms_per_mb"), dig(R, "dl", "proxy_cpu_ms_per_mb"))])
        L += table(hdr2, rows2)
    if "proxyd" in P:
        L += benchlib.target_lines("reverse-proxy issue", TARGETS, check_targets(results))
    L.append(f"  (the issue's figures for the peers on this machine: {ISSUE_FIGURES})")
    L.append("")
    nat = [f"{P[n]['label']} {P[n]['wrk_native']['handshakes_resumed']} of "
           f"{(P[n]['wrk_native']['handshakes_full'] or 0) + (P[n]['wrk_native']['handshakes_resumed'] or 0)}"
           for n in names if dig(P[n], "wrk_native", "handshakes_resumed") is not None]
    if nat:
        L.append("TLS session resumption: wrk on its own (1 connection, Connection: close, 1 s) resumed "
                 + ", ".join(nat) + " handshakes. Every measured run loads fullhs.so (LD_PRELOAD), which drops "
                 "the session on each reconnect and counts handshakes:")
    counts = [f"{P[n]['label']} {P[n]['hs']['handshakes_full']:,} full / {P[n]['hs']['handshakes_resumed']} "
              f"resumed for {P[n]['hs']['requests']:,} requests"
              for n in names if P[n].get("scheme") == "https" and dig(P[n], "hs", "requests")]
    if counts:
        L.append("  handshake runs (valid ones): " + "; ".join(counts))
    heads = benchlib.saturation(P, names, ("rps", "hs", "hsr"))
    if heads:
        L.append("where core 0 (wrk + backend) would be saturated, from its share at the measured rate (a rate "
                 "near this is the client's limit, not the proxy's): " + ", ".join(heads))
    crow = []
    for n in names:
        for k, what in (("rps", "ka req/s"), ("hs", "handshakes"), ("hsr", "resumed"), ("dl", "download")):
            v = P[n].get(k)
            if not v or not v.get("valid_runs"):
                continue
            cp, cc = dig(v, "cores", "proxy") or {}, dig(v, "cores", "client") or {}
            own_p, own_c = v.get("proxy_cpu_share") or 0.0, v.get("client_core_share")
            crow.append([P[n]["label"], what, num(v.get("proxy_cpu_share"), "{:.2f}"),
                         num(None if "task" not in cp else max(0.0, cp["task"] - own_p), "{:.2f}")]
                        + [num(cp.get(x), "{:.2f}") for x in ("irq", "steal", "idle")]
                        + [num(own_c, "{:.2f}"),
                           num(None if "task" not in cc or own_c is None else max(0.0, cc["task"] - own_c), "{:.2f}")]
                        + [num(cc.get(x), "{:.2f}") for x in ("irq", "steal", "idle")])
    if crow:
        L.append("")
        L.append(f"where the CPU went (medians, shares of each run's wall time): on core {o['proxy_cpu']} the proxy's "
                 f"own processes, other tasks (other work on the machine), irq+softirq (loopback TCP work no "
                 f"process is charged with), steal (taken by the hypervisor), idle; on core {o['client_cpu']} the "
                 f"same with wrk or curl + the backend. A proxy whose core has idle or other work in it was not "
                 f"the limit; busy cores with 'other' in them mean low rates, so compare CPU per operation.")
        L += table(["proxy", "run", "proxy", "other", "irq", "steal", "idle",
                    "wrk/curl+backend", "other", "irq", "steal", "idle"], crow)
    L += benchlib.machine_lines(results, names, ("rps", "hs", "hsr", "dl"))
    L.append("CPU us/req, us/hs, ms/MB = the proxy's own user+system CPU time (process tree, /proc) per request, "
             "per new connection (handshake + one request), per MB downloaded; dRSS = peak VmRSS during the "
             "download minus VmRSS before; idle RSS = VmRSS 1 s after start.")
    return "\n".join(L)


def check_targets(results):
    P = results["proxies"]
    pd = P["proxyd"]
    verdict, ge = benchlib.Verdicts(), benchlib.at_least
    v, mm = dig(pd, "rps", "median"), dig(P, "mitmdump", "rps", "median")
    verdict("keep-alive req/s >= 8x mitmdump", ge(v, mm, 8), f"{num(v)} vs 8 x {num(mm)}")
    v, mm = dig(pd, "rps", "proxy_cpu_us_per_op"), dig(P, "mitmdump", "rps", "proxy_cpu_us_per_op")
    verdict("  (CPU) us per request <= mitmdump's / 8", ge(mm, v, 8), f"{num(v)} vs {num(mm)} / 8")
    v, mm = dig(pd, "hs", "median"), dig(P, "mitmdump", "hs", "median")
    verdict("new TLS handshakes/s >= 2x mitmdump", ge(v, mm, 2), f"{num(v)} vs 2 x {num(mm)}")
    v, mm = dig(pd, "hs", "proxy_cpu_us_per_op"), dig(P, "mitmdump", "hs", "proxy_cpu_us_per_op")
    verdict("  (CPU) us per handshake <= mitmdump's / 2", ge(mm, v, 2), f"{num(v)} vs {num(mm)} / 2")
    v, ng = dig(pd, "dl", "median_mb_per_s"), dig(P, "nginx", "dl", "median_mb_per_s")
    verdict("download MB/s >= 0.5x nginx", ge(v, ng, 0.5), f"{num(v)} vs 0.5 x {num(ng)}")
    v, ng = dig(pd, "dl", "proxy_cpu_ms_per_mb"), dig(P, "nginx", "dl", "proxy_cpu_ms_per_mb")
    verdict("  (CPU) ms per MB <= 2x nginx's", None if v is None or ng is None else v <= 2 * ng,
            f"{num(v, '{:.2f}')} vs 2 x {num(ng, '{:.2f}')}")
    return verdict


# --------------------------------------------------------------------- main

def parse_args(argv):
    ap = benchlib.arg_parser("bench/reverse.sh", __doc__)
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES), help=f"comma-separated, from {','.join(ALL_PROXIES)}")
    ap.add_argument("--measure", default=",".join(DEFAULT_MEASURES),
                    help=f"comma-separated, from {','.join(ALL_MEASURES)} (resumed: new connections/s as "
                         "wrk makes them on its own, resuming the TLS session; not a full handshake)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 run of 2 s each, 1 download")
    ap.add_argument("--runs", type=int, default=5, help="wrk runs per measurement (median)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rps-concurrency", type=int, default=50, help="wrk connections for keep-alive req/s")
    ap.add_argument("--hs-concurrency", type=int, default=10, help="wrk connections for new handshakes/s")
    ap.add_argument("--dl-runs", type=int, default=3, help="downloads per proxy (median)")
    ap.add_argument("--dl-max-time", type=int, default=60,
                    help="seconds allowed per download; a proxy that times out gets no further runs")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of /big, MiB")
    ap.add_argument("--wait-quiet", type=int, default=120,
                    help="seconds to wait, before measuring, for other work on the machine (other sessions' test "
                         "suites: /proc/stat counts them, ps may not see them) to drop under --quiet-cores; "
                         "then it starts anyway")
    ap.add_argument("--quiet-cores", type=float, default=0.3, help="what counts as quiet, in cores busy")
    ap.add_argument("--max-restarts", type=int, default=2,
                    help="times a proxy stopped from outside the bench (exit 0 after SIGTERM) is started again")
    benchlib.add_common_args(ap, 19000, "backend on this port, proxies on the next ones (127.0.0.1); run.py uses "
                             "18900+, mitm.py 18950+",
                             "core for wrk, curl, the backend and this script",
                             "core for the backend nginx (default: --client-cpu; 'none' = not pinned)",
                             "no apt-get or pip; use the venvs as they are")
    return benchlib.parse(ap, argv, ALL_PROXIES, ALL_MEASURES, quick={"runs": 1, "duration": 2, "dl_runs": 1},
                          ranges=(("runs", 1, 50), ("duration", 1, 120), ("dl_runs", 1, 20), ("big_mib", 1, 16384),
                                  ("dl_max_time", 5, 3600), ("rps_concurrency", 1, 1000),
                                  ("hs_concurrency", 1, 200), ("port_base", 1024, 65000),
                                  ("wait_quiet", 0, 3600), ("max_restarts", 0, 10)))


def main(argv=None):
    return benchlib.main(argv, parse_args, render, bench)


def bench(a, argv):
    # this script and what it runs (curl, probes) stay off the proxy core
    started = benchlib.begin(PROCS, WORK, RESULTS, pin=a.client_cpu)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    need = ["nginx", "wrk", "curl", "openssl", "taskset", "gcc"] + (["haproxy"] if "haproxy" in a.proxies else [])
    benchlib.ensure_debian(need, a.no_install, DEBIAN_PACKAGES)
    tools = build_tools()
    pki = make_pki()
    backend_port = a.port_base
    proxies = benchlib.make_proxies(PROXY_CLASSES, a, WORK, backend_port, pki)

    results = benchlib.new_results(
        started, "bench/reverse.sh", argv, a,
        "proxies measure runs duration rps_concurrency hs_concurrency dl_runs dl_max_time big_mib proxy_cpu "
        "client_cpu origin_cpu origin_port quick wait_quiet quiet_cores", "nginx haproxy wrk curl openssl",
        proxyd_git=next((px.git for px in proxies if px.name == "proxyd"), None), leaf_sha256=pki["leaf_sha256"])
    out_json = RESULTS / f"reverse-{stamp}.json"
    save = benchlib.saver(results, out_json)

    bwork = WORK / "backend"
    big_size = benchlib.prepare_www(bwork, a.big_mib, b"proxyd reverse bench small response body.\n",
                                    big_from=BENCH / ".work" / "www" / "big")   # run.py's, if it is there
    backend = start_backend(backend_port, a.origin_cpu)
    targets = []
    try:
        for px in proxies:
            p, res = start_proxy(a, tools, px, backend.pid)
            results["proxies"][px.name] = res
            if p is not None or (px.name == "baseline" and res["ok"]):
                targets.append(Target(a, px, p, res))
        save()
        results["meta"]["other_work"] = wait_quiet(a)
        idle = results["idle_cpu_share"] = {}
        for kind, key, what in (("rps", "rps", f"HTTPS keep-alive requests/s, c={a.rps_concurrency}"),
                                ("handshakes", "hs", f"new TLS connections/s, full handshakes, c={a.hs_concurrency}"),
                                ("resumed", "hsr", f"new TLS connections/s, wrk resuming sessions, "
                                                   f"c={a.hs_concurrency}")):
            tt = [t for t in targets if kind != "resumed" or t.px.scheme == "https"]
            if kind in a.measure and tt:
                log(f"=== {what} ===")
                idle[f"before {kind}"] = idle_check(tt, kind)
                benchlib.record(results, key, measure_wrk(a, tools, kind, tt, backend.pid), save)
        if "download" in a.measure and targets:
            log(f"=== {a.big_mib} MiB download ===")
            idle["before download"] = idle_check(targets, "download")
            benchlib.record(results, "dl", measure_download(a, targets, big_size, backend.pid), save)
        for t in targets:
            if t.ready("at the end") is True and t.pid:
                t.res["rss_end_kib"] = rss_kib(t.pid)
        save()
    finally:
        for t in targets:
            if t.proc is not None:
                PROCS.stop(t.proc)
        PROCS.stop_all()
    return benchlib.finish(results, out_json, render)


if __name__ == "__main__":
    sys.exit(main())
