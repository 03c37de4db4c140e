#!/usr/bin/env python3
"""proxyd --mode mitm against mitmdump and proxy.py, TLS interception on one loopback HTTPS origin.

Run it with bench/mitm.sh (see "mitm.py" in bench/README.md). In one run it
installs what it needs (venvs under bench/.work/mitm with pip; nginx, curl and
openssl from Debian if missing), makes a throwaway origin CA and a "localhost"
certificate with openssl, starts one nginx HTTPS origin on 127.0.0.1 and the
intercepting proxies (each pinned to one core), then measures:

  conn   new intercepted connections/s: CONNECT + TLS handshake + one small GET
         + close, by a multi-process Python client, concurrency 10
  ka     keep-alive requests/s inside intercepted connections (c=1 and c=10)
  dl     MB/s of a 1 GiB intercepted download (curl), and the no-proxy baseline
  slow   RSS growth of the proxy while a 1 MB/s reader downloads (curl --limit-rate)

The same client measures the origin directly (no proxy): that is its ceiling.
Raw results go to bench/results/mitm-*.json, the printed table to
bench/results/mitm-*.txt.

Not part of the test suite. Loopback only: every socket is on 127.0.0.1. Every
process it starts is stopped on exit, Ctrl-C, SIGTERM and SIGHUP; every loop and
wait is bounded in count and time.
"""

import atexit
import errno
import multiprocessing
import os
import re
import resource
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time

import benchlib  # bench/ is on sys.path when run as a script
from benchlib import (
    BENCH, LOOPBACK, RESULTS, SMALL_SIZE, Procs, RssSampler, cpu_seconds, dig, log, mib, num, ratio, rss_kib, run,
    table,
)

WORK = BENCH / ".work" / "mitm"
HOSTNAME = "localhost"          # the origin's name: CONNECT target, SNI, certificate SAN

ALL_PROXIES = ["baseline", "proxyd", "proxyd-rsa", "mitmdump", "proxypy"]
DEFAULT_PROXIES = ["baseline", "proxyd", "mitmdump", "proxypy"]
ALL_MEASURES = ["conn", "ka", "dl", "slow"]
DEBIAN_PACKAGES = {"nginx": "nginx", "curl": "curl", "openssl": "openssl", "taskset": "util-linux"}

# Targets for proxyd from issue 4 ("How it is checked", bench/).
TARGETS = ("new connections/s >= 3x mitmdump; keep-alive req/s >= proxy.py's and never below "
           "3x mitmdump; download MB/s >= 1.5x mitmdump; slow-reader RSS growth < 2 MiB")
# What the issue says the peers measure on this machine, for comparison.
ISSUE_FIGURES = "mitmdump 160, proxy.py 230 new conn/s; 840 and 2,600 keep-alive req/s; " \
                "mitmdump 300 MB/s (proxy.py stalls); mitmdump RSS growth < 1 MiB"

benchlib.LABEL = 'mitm bench'
PROCS = Procs()
CLIENT_PROCS = []   # multiprocessing workers alive right now (killed on exit too)


def _stop_clients():
    for w in list(CLIENT_PROCS):
        if w.is_alive():
            w.kill()
        w.join(2)
    CLIENT_PROCS.clear()


def wait_file(path, proc=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


# --------------------------------------------------------------- certificates

def openssl(*args, input=None):
    return run(["openssl"] + [str(a) for a in args], timeout=60, quiet=True, input=input)


def make_origin_pki():
    """A throwaway origin CA (ECDSA P-256) and a certificate for "localhost" signed by it."""
    d = WORK / "pki"
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "origin-ca.pem", d / "origin-ca.key"
    crt, key = d / "localhost.pem", d / "localhost.key"
    if all(p.exists() for p in (ca, ca_key, crt, key)):
        end = openssl("x509", "-in", crt, "-noout", "-checkend", str(7 * 86400))
        if end.returncode == 0:
            return ca, crt, key
    log("making the origin CA and the localhost certificate (openssl)")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", ca_key, "-out", ca, "-days", "90", "-subj", "/CN=proxyd bench throwaway origin CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash")
    csr = d / "localhost.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN={HOSTNAME}")
    ext = d / "localhost.ext"
    ext.write_text(f"subjectAltName=DNS:{HOSTNAME}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "60", "-sha256", "-extfile", ext)
    for p in (ca_key, key):
        p.chmod(0o600)
    return ca, crt, key


def make_proxypy_ca():
    """proxy.py's three files, as its README makes them: an RSA CA key and self-signed CA
    certificate, and a separate RSA key that every generated leaf uses."""
    d = WORK / "proxypy" / "ca"
    d.mkdir(parents=True, exist_ok=True)
    key, crt, sign = d / "ca-key.pem", d / "ca-cert.pem", d / "ca-signing-key.pem"
    if not all(p.exists() for p in (key, crt, sign)):
        log("making proxy.py's CA (openssl)")
        openssl("genrsa", "-out", key, "2048")
        openssl("req", "-new", "-x509", "-days", "90", "-key", key, "-out", crt,
                "-subj", "/CN=proxy.py bench CA")
        openssl("genrsa", "-out", sign, "2048")
    return key, crt, sign


def cert_summary(der):
    """Key type and issuer of a DER certificate, via openssl."""
    p = run(["openssl", "x509", "-inform", "DER", "-noout", "-text"], timeout=30, check=False,
            quiet=True, input=der)
    text = p.stdout.decode(errors="replace")
    alg = re.search(r"Public Key Algorithm: (\S+)", text)
    bits = re.search(r"Public-Key: \((\d+) bit\)", text)
    issuer = re.search(r"Issuer: (.*)", text)
    kind = {"rsaEncryption": "RSA", "id-ecPublicKey": "ECDSA"}.get(alg.group(1) if alg else "", "?")
    return {"key": f"{kind}-{bits.group(1)}" if bits else kind,
            "issuer": issuer.group(1).strip() if issuer else None}


# ------------------------------------------------------------------- origin

def start_origin(port, cpu, crt, key):
    return benchlib.start_nginx(
        PROCS, WORK, port, cpu,
        "HTTPS origin for proxyd bench/mitm.py: loopback only, its own paths, no system config",
        listen=" ssl", server=[f"server_name {HOSTNAME};", f"ssl_certificate {crt};",
                               f"ssl_certificate_key {key};", "ssl_protocols TLSv1.2 TLSv1.3;"])


# ------------------------------------------------------------------ proxies
#
# benchlib.Proxy and its proxyd, mitmdump and proxy.py: install, venv, argv; here
# what interception adds, to every proxy through Intercepting.

class Intercepting:
    """mitm.py's side of a proxy: constructed as cls(WORK, args, port, origin_port, origin_ca);
    origin_ca is what it trusts upstream, ca what a client must trust to talk through it; a
    HOME of its own; after start, ca must exist (the proxy makes it on first start)."""

    def __init__(self, work, args, port, origin_port, origin_ca):
        super().__init__(work, args, port, origin_port)
        self.origin_ca = origin_ca
        self.ca = None

    def env(self):
        return self.home_env()

    def after_start(self, proc):
        return None if wait_file(self.ca, proc, 30) else f"no {self.ca} after start"


class Baseline(Intercepting, benchlib.Proxy):
    name, label = "baseline", "no proxy"

    def __init__(self, *a):
        super().__init__(*a)
        self.ca = self.origin_ca
        self.port = None


class Proxyd(Intercepting, benchlib.Proxyd):
    mode = ["--mode", "mitm"]
    leaf_key = None

    def prepare(self):
        self.ca_dir = WORK / "proxyd-ca"     # proxyd makes it on first start (0700, key 0600)
        self.ca = self.ca_dir / "ca.pem"

    def options(self):
        return (["--ca-dir", self.ca_dir, "--upstream-ca", self.origin_ca]
                + (["--leaf-key", self.leaf_key] if self.leaf_key else []))


class ProxydRsa(Proxyd):
    name, label = "proxyd-rsa", "proxyd rsa"
    leaf_key = "rsa"


class Mitmdump(Intercepting, benchlib.Mitmdump):
    def prepare(self):
        self.ca = self.dir / "confdir" / "mitmproxy-ca-cert.pem"   # mitmproxy makes its CA there on first start

    def options(self):
        # ssl_verify_upstream_trusted_ca: the origin CA (upstream verification stays on).
        return ["--set", f"ssl_verify_upstream_trusted_ca={self.origin_ca}"]


class ProxyPy(Intercepting, benchlib.ProxyPy):
    def prepare(self):
        self.ca_key, self.ca, self.signing_key = make_proxypy_ca()
        self.cert_dir = self.dir / "certs"     # its leaf cache on disk: emptied each run
        if self.cert_dir.exists():
            shutil.rmtree(self.cert_dir)
        self.cert_dir.mkdir(parents=True)

    def options(self):
        # --ca-file: the bundle it verifies upstreams with (default certifi) -> the origin CA.
        return ["--ca-key-file", self.ca_key, "--ca-cert-file", self.ca,
                "--ca-signing-key-file", self.signing_key, "--ca-cert-dir", self.cert_dir,
                "--ca-file", self.origin_ca]


PROXY_CLASSES = {c.name: c for c in (Baseline, Proxyd, ProxydRsa, Mitmdump, ProxyPy)}


# ------------------------------------------------------------------- client
#
# Runs in worker processes (fork), pinned to the client core. Raw sockets: CONNECT,
# read the proxy's answer, then ssl.wrap_socket with only the proxy's CA trusted, so
# a verified handshake proves the connection was intercepted.

class ProtoError(Exception):
    pass


_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


def _read_head(sock, buf):
    n = 0
    while True:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            head = bytes(buf[:i + 2]).lower()
            del buf[:i + 4]
            return head
        if len(buf) > 65536 or n > 10000:
            raise ProtoError("response head too long")
        d = sock.recv(65536)
        n += 1
        if not d:
            raise ProtoError("closed before the response head")
        buf += d


def _read_response(sock, buf, method=b"GET"):
    """(status, body length, keep-alive) of one response; the body is read and dropped."""
    head = _read_head(sock, buf)
    try:
        status = int(head[9:12])
    except ValueError:
        raise ProtoError(f"bad status line {head[:40]!r}")
    keep = b"\r\nconnection: close" not in head
    if method == b"CONNECT" or status in (204, 304) or 100 <= status < 200:
        return status, 0, keep
    m = _CL.search(head)
    if m:
        want = int(m.group(1))
        while len(buf) < want:
            d = sock.recv(max(65536, want - len(buf)))
            if not d:
                raise ProtoError(f"closed after {len(buf)} of {want} body bytes")
            buf += d
        del buf[:want]
        return status, want, keep
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        total = 0
        for _ in range(100000):
            while b"\r\n" not in buf:
                d = sock.recv(65536)
                if not d:
                    raise ProtoError("closed in a chunk header")
                buf += d
            i = buf.index(b"\r\n")
            size = int(bytes(buf[:i]).split(b";")[0], 16)
            del buf[:i + 2]
            while len(buf) < size + 2:
                d = sock.recv(65536)
                if not d:
                    raise ProtoError("closed in a chunk")
                buf += d
            del buf[:size + 2]
            total += size
            if size == 0:
                return status, total, keep
        raise ProtoError("too many chunks")
    total = len(buf)      # close-delimited
    buf.clear()
    while True:
        d = sock.recv(65536)
        if not d:
            return status, total, False
        total += len(d)


def _open(target, ctx, timeout=10.0):
    """A TLS connection to the origin through the proxy (CONNECT), or directly."""
    proxy_port, origin_port = target["proxy_port"], target["origin_port"]
    s = socket.create_connection((LOOPBACK, proxy_port or origin_port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if proxy_port:
            s.sendall(f"CONNECT {HOSTNAME}:{origin_port} HTTP/1.1\r\n"
                      f"Host: {HOSTNAME}:{origin_port}\r\n\r\n".encode())
            buf = bytearray()
            status, _, _ = _read_response(s, buf, b"CONNECT")
            if status != 200:
                raise ProtoError(f"CONNECT answered {status}")
            if buf:
                raise ProtoError("bytes after the CONNECT answer")
        return ctx.wrap_socket(s, server_hostname=HOSTNAME)
    except BaseException:
        s.close()
        raise


def _client_ctx(cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))   # only this CA: check_hostname on
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _request(origin_port, close):
    return (f"GET /small HTTP/1.1\r\nHost: {HOSTNAME}:{origin_port}\r\nUser-Agent: proxyd-mitm-bench\r\n"
            + ("Connection: close\r\n" if close else "") + "\r\n").encode()


class _Conn:
    """One client connection, non-blocking, driven by its worker's selector.

    conn mode: connect, CONNECT, TLS handshake, one GET with Connection: close, close,
    and again. ka mode: the same connection for GET after GET (reopened, and counted
    as an error, if the proxy closes it)."""

    def __init__(self, w):
        self.w = w
        self.open()

    def open(self):
        w = self.w
        self.sock = self.ss = self.registered = None
        self.ev = selectors.EVENT_WRITE
        self.buf = bytearray()
        self.t0 = self.active = time.monotonic()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        err = s.connect_ex((LOOPBACK, w.proxy_port or w.origin_port))
        self.state = "connecting"
        if err not in (0, errno.EINPROGRESS):
            self.fail(OSError(err, os.strerror(err)))
            return
        w.sel.register(s, selectors.EVENT_WRITE, self)
        self.registered = s

    def _want(self, ev):
        if self.ev != ev:
            self.w.sel.modify(self.registered, ev, self)
            self.ev = ev

    def close(self):
        if self.registered is not None:
            try:
                self.w.sel.unregister(self.registered)
            except (KeyError, ValueError):
                pass
            self.registered = None
        for s in (self.ss, self.sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.ss = self.sock = None

    def fail(self, e):
        self.w.error(e)
        self.close()
        if self.w.running():
            if self.w.mode == "ka":
                self.w.reconnects += 1
            self.w.reopen.append(self)    # from the loop, not from here (no recursion)

    def step(self, mask):
        self.active = time.monotonic()
        try:
            getattr(self, "_" + self.state.replace("-", "_"))()
        except (OSError, ProtoError, ValueError) as e:   # ssl.SSLError is an OSError
            self.fail(e)

    def _connecting(self):
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        if self.w.proxy_port:
            self.sock.send(self.w.connect_req)   # small: goes out whole on a fresh socket
            self.state = "connect-reply"
            self._want(selectors.EVENT_READ)
        else:
            self._start_tls()

    def _connect_reply(self):
        d = self.sock.recv(65536)
        if not d:
            raise ProtoError("proxy closed after CONNECT")
        self.buf += d
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            if len(self.buf) > 65536:
                raise ProtoError("CONNECT answer too long")
            return
        if self.buf[9:12] != b"200":
            raise ProtoError(f"CONNECT answered {bytes(self.buf[:12])!r}")
        if len(self.buf) != i + 4:
            raise ProtoError("bytes after the CONNECT answer")
        self.buf.clear()
        self._start_tls()

    def _start_tls(self):
        self.w.sel.unregister(self.registered)
        self.registered = None
        self.ss = self.w.ctx.wrap_socket(self.sock, server_hostname=HOSTNAME, do_handshake_on_connect=False)
        self.sock = None   # detached into ss
        self.ev = selectors.EVENT_READ
        self.w.sel.register(self.ss, self.ev, self)
        self.registered = self.ss
        self.state = "handshake"
        self._handshake()

    def _handshake(self):
        try:
            self.ss.do_handshake()
        except ssl.SSLWantReadError:
            self._want(selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(selectors.EVENT_WRITE)
            return
        self._send_request()

    def _send_request(self):
        self.out = self.w.req
        self.t_req = time.monotonic()
        self.state = "sending"
        self._sending()

    def _sending(self):
        while self.out:
            try:
                n = self.ss.send(self.out)
            except ssl.SSLWantWriteError:
                self._want(selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._want(selectors.EVENT_READ)
                return
            self.out = self.out[n:]
        self.state = "response"
        self.head = None
        self._want(selectors.EVENT_READ)
        if self.ss.pending():
            self._response()

    def _response(self):
        eof = False
        for _ in range(10000):        # drain what TLS has, the selector only sees the socket
            try:
                d = self.ss.recv(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                d = b""
            if not d:
                eof = True
                break
            self.buf += d
        if self.head is None:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if eof:
                    raise ProtoError("closed before the response head")
                if len(self.buf) > 65536:
                    raise ProtoError("response head too long")
                return
            head = bytes(self.buf[:i + 2]).lower()
            del self.buf[:i + 4]
            self.head = head
            self.status = int(head[9:12])
            self.keep = b"\r\nconnection: close" not in head
            m = _CL.search(head)
            self.length = int(m.group(1)) if m else None
            self.chunked = m is None and b"\r\ntransfer-encoding:" in head and b"chunked" in head
            if m is None and not self.chunked:
                self.keep = False      # close-delimited
        if self.length is not None:
            if len(self.buf) < self.length:
                if eof:
                    raise ProtoError(f"closed after {len(self.buf)} of {self.length} body bytes")
                return
            n = self.length
            del self.buf[:n]
        elif self.chunked:
            if not self.buf.endswith(b"0\r\n\r\n"):
                if eof:
                    raise ProtoError("closed in a chunked body")
                return
            n, body = 0, memoryview(self.buf)
            for _ in range(100000):
                j = bytes(body[:20]).find(b"\r\n")
                size = int(bytes(body[:j]).split(b";")[0], 16)
                body = body[j + 2 + size + 2:]
                n += size
                if size == 0:
                    break
            body.release()
            self.buf.clear()
        else:
            if not eof:
                return
            n = len(self.buf)
            self.buf.clear()
        self.w.done(self, self.status, n)
        if self.w.mode == "ka" and self.keep and not eof and self.w.running():
            self._send_request()
            return
        if self.w.mode == "ka" and self.w.running():
            self.w.error(ProtoError("the proxy closed a keep-alive connection"))
            self.w.reconnects += 1
        self.close()
        if self.w.running():
            self.open()


class _Worker:
    """A client process's event loop: nconns connections, ops counted in [start_at, end]."""

    def __init__(self, mode, target, nconns, start_at, duration, max_ops):
        self.mode, self.nconns = mode, nconns
        self.proxy_port, self.origin_port = target["proxy_port"], target["origin_port"]
        self.ctx = _client_ctx(target["ca"])
        self.connect_req = (f"CONNECT {HOSTNAME}:{self.origin_port} HTTP/1.1\r\n"
                            f"Host: {HOSTNAME}:{self.origin_port}\r\n\r\n").encode()
        self.req = _request(self.origin_port, mode == "conn")
        self.start_at, self.end, self.max_ops = start_at, start_at + duration, max_ops
        self.sel = selectors.DefaultSelector()
        self.ops = self.errors = self.reconnects = self.bad = 0
        self.first_error = None
        self.lat = []
        self.reopen = []
        self.stopped = False

    def running(self):
        return not self.stopped and self.errors < 1000 and self.ops < self.max_ops

    def error(self, e):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {e}"

    def done(self, c, status, n):
        now = time.monotonic()
        if status != 200 or n != SMALL_SIZE:
            self.error(ProtoError(f"status {status}, {n} bytes"))
            return
        if self.start_at <= now <= self.end:
            self.ops += 1
            self.lat.append(now - (c.t0 if self.mode == "conn" else c.t_req))

    def run(self):
        # ka: connections opened and warmed up for 1 s before counting starts; conn: at start_at
        begin = self.start_at - (1.0 if self.mode == "ka" else 0.0)
        while time.monotonic() < begin:
            time.sleep(min(0.01, max(0.0, begin - time.monotonic())))
        conns = [_Conn(self) for _ in range(self.nconns)]
        cpu0 = None
        last_check = time.monotonic()
        for _ in range(100_000_000):
            now = time.monotonic()
            if cpu0 is None and now >= self.start_at:
                cpu0 = time.process_time()
            if now >= self.end or not self.running():
                break
            for key, mask in self.sel.select(timeout=min(0.2, max(0.001, self.end - now))):
                key.data.step(mask)
            while self.reopen and self.running():
                self.reopen.pop().open()
            if now - last_check > 0.5:   # a connection silent for 10 s is a failure
                last_check = now
                for c in conns:
                    if now - c.active > 10.0 and self.running():
                        c.active = now
                        c.fail(ProtoError(f"no progress for 10 s in state {c.state}"))
        cpu = time.process_time() - (cpu0 if cpu0 is not None else time.process_time())
        self.stopped = True
        for c in conns:
            c.close()
        self.sel.close()
        return cpu


def _worker(mode, target, nconns, start_at, duration, max_ops, cpu, conn):
    res = {"ops": 0, "errors": 0, "first_error": None, "reconnects": 0}
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        w = _Worker(mode, target, nconns, start_at, duration, max_ops)
        res["cpu_s"] = w.run()
        res.update(ops=w.ops, errors=w.errors, first_error=w.first_error, reconnects=w.reconnects)
        res["lat"] = w.lat[:200000]
    except BaseException as e:   # report, never hang the parent
        res["errors"] += 1
        res["first_error"] = res["first_error"] or f"{type(e).__name__}: {e}"
    conn.send(res)
    conn.close()


def _sleep_until(t):
    for _ in range(100000):
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def run_clients(mode, target, conc, duration, cpu, procs=None, watch=None, max_ops=2_000_000):
    """conc connections spread over procs worker processes (one event loop each), for
    duration seconds. Returns totals: ops/s, errors, client CPU, latency, and the CPU
    seconds each pid in watch ({name: pid}) used between the start and the end of the
    counted window."""
    procs = max(1, min(procs or 1, conc))
    mp = multiprocessing.get_context("fork")
    start_at = time.monotonic() + 0.3 + (1.0 if mode == "ka" else 0.0) + 0.05 * procs
    pipes, workers = [], []
    for k in range(procs):
        nconns = conc // procs + (1 if k < conc % procs else 0)
        a, b = mp.Pipe(duplex=False)
        w = mp.Process(target=_worker, args=(mode, target, nconns, start_at, duration, max_ops, cpu, b),
                       daemon=True)
        w.start()
        b.close()
        pipes.append(a)
        workers.append(w)
        CLIENT_PROCS.append(w)
    watch = {k: v for k, v in (watch or {}).items() if v}
    _sleep_until(start_at)
    cpu0 = {k: cpu_seconds(v) for k, v in watch.items()}
    _sleep_until(start_at + duration)
    used = {f"{k}_cpu_s": cpu_seconds(v) - cpu0[k] for k, v in watch.items()}
    results = []
    deadline = start_at + duration + 30.0
    for a, w in zip(pipes, workers):
        left = max(0.1, deadline - time.monotonic())
        if a.poll(left):
            try:
                results.append(a.recv())
            except EOFError:
                results.append({"ops": 0, "errors": 1, "first_error": "worker died"})
        else:
            results.append({"ops": 0, "errors": 1, "first_error": "worker did not finish in time"})
        a.close()
    for w in workers:
        w.join(2)
        if w.is_alive():
            w.kill()
            w.join(2)
        CLIENT_PROCS.remove(w)
    ops = sum(r["ops"] for r in results)
    lat = sorted(x for r in results for x in r.get("lat", ()))
    ccpu = sum(r.get("cpu_s", 0.0) for r in results)
    return {"ops": ops, "rate": ops / duration, "errors": sum(r["errors"] for r in results),
            "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
            "reconnects": sum(r.get("reconnects", 0) for r in results), "procs": procs,
            "latency_ms_p50": lat[len(lat) // 2] * 1e3 if lat else None,
            "latency_ms_p90": lat[min(len(lat) - 1, int(len(lat) * 0.90))] * 1e3 if lat else None,
            "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else None,
            "latency_ms_mean": sum(lat) / len(lat) * 1e3 if lat else None,
            "latency_ms_max": lat[-1] * 1e3 if lat else None,
            # time spent in operations slower than 5 ms, as a share of all operation time
            "latency_share_over_5ms": sum(x for x in lat if x > 0.005) / sum(lat) if lat else None,
            "client_cpu_s": round(ccpu, 3), "client_cpu_us_per_op": ccpu / ops * 1e6 if ops else None,
            **used}


def probe(target):
    """One intercepted request; returns (ok, detail, leaf summary)."""
    try:
        ctx = _client_ctx(target["ca"])
        ss = _open(target, ctx)
        try:
            der = ss.getpeercert(binary_form=True)
            version, alpn = ss.version(), ss.selected_alpn_protocol()
            ss.sendall(_request(target["origin_port"], True))
            status, n, _ = _read_response(ss, bytearray())
        finally:
            ss.close()
        leaf = cert_summary(der)
        leaf.update(tls=version, alpn=alpn)
        ok = status == 200 and n == SMALL_SIZE
        return ok, f"status {status}, {n} bytes", leaf
    except (OSError, ProtoError, ValueError, RuntimeError, subprocess.TimeoutExpired) as e:
        return False, f"{type(e).__name__}: {e}", None


# ---------------------------------------------------------------- measuring

def _target(px):
    return {"proxy_port": px.port, "origin_port": px.origin_port, "ca": str(px.ca)}


def measure_clients(a, mode, conc, live, origin_pid):
    """Interleaved runs: round i runs every target once, in a rotated order."""
    runs = {px.name: [] for px, _ in live}
    for px, pid in live:   # warm-up: leaves made, pools and caches filled; not counted
        run_clients(mode, _target(px), conc, min(2, a.duration), a.client_cpu, a.client_procs)
    for i, (px, pid) in benchlib.rounds(live, a.runs):
        load = os.getloadavg()[0]
        r = run_clients(mode, _target(px), conc, a.duration, a.client_cpu, a.client_procs,
                        watch={"proxy": pid, "origin": origin_pid})
        r.setdefault("proxy_cpu_s", None)
        r["proxy_cpu_us_per_op"] = (r["proxy_cpu_s"] / r["ops"] * 1e6
                                    if r["proxy_cpu_s"] is not None and r["ops"] else None)
        r["proxy_cpu_share"] = r["proxy_cpu_s"] / a.duration if r["proxy_cpu_s"] is not None else None
        # core 0 (client + origin) busy share: near 1.0 would mean the client side is the limit
        r["client_core_share"] = (r["client_cpu_s"] + r["origin_cpu_s"]) / a.duration
        r["loadavg"] = round(load, 2)
        r["valid"] = r["ops"] > 0 and r["errors"] <= max(2, 0.01 * r["ops"])
        runs[px.name].append(r)
        log(f"{px.name} {mode} c={conc} run {i + 1}/{a.runs}: {r['rate']:.0f}/s, {r['errors']} errors"
            + (f", proxy CPU {r['proxy_cpu_us_per_op']:.0f} us/op share {r['proxy_cpu_share']:.2f}"
               if r["proxy_cpu_us_per_op"] else "")
            + f", client core {r['client_core_share']:.2f}"
            + ("" if r["valid"] else f" INVALID ({r['first_error']})"))
    return {px.name: benchlib.rate_summary(runs[px.name], conc, ("proxy_cpu_us_per_op", "proxy_cpu_share",
                                                                 "client_core_share", "client_cpu_us_per_op"))
            for px, _ in live}


def curl_json(argv, timeout, cpu):
    return benchlib.curl_json(["--http1.1"] + argv, timeout, cpu)


def _curl_via(px):
    url = f"https://{HOSTNAME}:{px.origin_port}/big"
    via = [] if px.port is None else ["-x", f"http://{LOOPBACK}:{px.port}"]
    return via + ["--cacert", str(px.ca), url]


def measure_download(a, live, big_size, origin_pid):
    runs = {px.name: [] for px, _ in live}
    gave_up = set()
    for i, (px, pid) in benchlib.rounds(live, a.dl_runs):
        if px.name in gave_up:
            continue
        c0, o0 = (cpu_seconds(pid) if pid else None), cpu_seconds(origin_pid)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with RssSampler(pid) as s:
            rc, w, err = curl_json(_curl_via(px) + ["--max-time", str(a.dl_max_time)],
                                   a.dl_max_time + 30, a.client_cpu)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = benchlib.download_record(rc, w, s.result())
        t = r["time_total"]
        if t:
            # which core was the limit: the proxy's, or core 0 (curl decrypting + nginx encrypting)
            curl_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            r["proxy_cpu_share"] = (cpu_seconds(pid) - c0) / t if pid else None
            r["client_core_share"] = (curl_cpu + cpu_seconds(origin_pid) - o0) / t
        if benchlib.judge_download(r, err, big_size):
            gave_up.add(px.name)
        runs[px.name].append(r)
        benchlib.log_download(px.name, i, a.dl_runs, r)
    return {px.name: benchlib.download_summary(runs[px.name], "proxy_cpu_share", "client_core_share")
            for px, _ in live}


def idle_check(live, phase):
    """benchlib.idle_check of the proxies in LIVE ((proxy, pid or None))."""
    return benchlib.idle_check({px.name: pid for px, pid in live if pid}, phase)


def measure_slow(a, px, pid):
    c0 = cpu_seconds(pid)
    with RssSampler(pid, interval=0.2) as s:
        rc, w, err = curl_json(_curl_via(px) + ["--limit-rate", "1M", "--max-time", str(a.slow_seconds)],
                               a.slow_seconds + 30, a.client_cpu)
    size = w.get("size_download", 0)
    r = {"curl_exit": rc, "received": size, "http_code": w.get("http_code"), "rss": s.result(),
         "proxy_cpu_share": (cpu_seconds(pid) - c0) / a.slow_seconds}
    r["valid"] = rc == 28 and w.get("http_code") == 200 and size > 0   # 28: our --max-time
    if not r["valid"]:
        r["error"] = f"curl exit {rc}, http {w.get('http_code')}, {size} bytes, {err[-200:]}"
    log(f"{px.name} slow reader (1 MB/s, {a.slow_seconds} s): {size / 1e6:.1f} MB, "
        f"RSS +{r['rss']['growth_kib'] / 1024:.1f} MiB, proxy core {r['proxy_cpu_share']:.2f}"
        + ("" if r["valid"] else f" INVALID ({r['error']})"))
    return r


def start_proxy(a, px):
    res = {"label": px.label, "version": px.version, "port": px.port,
           "loadavg_before": round(os.getloadavg()[0], 2)}
    if px.name == "baseline":
        res["flags"] = "curl / the client straight to the origin (its ceiling)"
        ok, detail, leaf = probe(_target(px))
        res.update(ok=ok, probe=detail, leaf=leaf)
        return None, res
    res["ok"] = False
    p = benchlib.launch(PROCS, px, res, a.proxy_cpu, a.start_timeout)
    if p is None:
        return None, res
    ok, detail, leaf = probe(_target(px))
    res.update(ok=ok, probe=detail, leaf=leaf)
    log(f"{px.name}: probe {'ok' if ok else 'FAILED'} ({detail}), leaf {leaf}, "
        f"idle RSS {res['rss_start_kib'] / 1024:.1f} MiB")
    if not ok:
        res["error"] = f"intercepted request failed: {detail}; see {px.dir}/output.log"
        PROCS.stop(p)
        return None, res
    return p, res


# ------------------------------------------------------------------- report

def render(results):
    m, o = results["meta"], results["meta"]["options"]
    P = results["proxies"]
    names = [n for n in ALL_PROXIES if n in P]
    kac = o["ka_concurrency"]
    L = [f"proxyd --mode mitm bench  {m['started']}  ({m['host']['cpu']}, {m['host']['cpus']} cores; "
         f"proxies on core {o['proxy_cpu']}, client and curl on core {o['client_cpu']}, "
         + (f"nginx on core {o['origin_cpu']})" if o.get("origin_cpu") is not None else "nginx not pinned)")]
    L += benchlib.head_lines(m)
    L.append(f"origin: nginx {m['versions'].get('nginx')} HTTPS on 127.0.0.1:{o['origin_port']} "
             f"(\"{HOSTNAME}\", ECDSA P-256 cert from a throwaway CA), /small = 1 KiB, /big = {o['big_mib']} MiB; "
             f"conn/ka: median of {o['runs']} x {o['duration']} s runs (interleaved), Python client "
             f"({o.get('client_procs')} processes, each an event loop: raw CONNECT, then ssl with only the "
             f"proxy's CA trusted); download: median of {o['dl_runs']} curl runs; "
             f"slow reader: curl --limit-rate 1M for {o['slow_seconds']} s")
    L.append("")
    hdr = (["proxy", "version", "leaf", f"new conn/s c={o['conn_concurrency']}", "CPU us/conn"]
           + [f"ka req/s c={c}" for c in kac] + [f"CPU us/req c={kac[0]}", "download MB/s", "dRSS download",
                                                  "dRSS slow 1MB/s", "idle RSS"])
    rows = []
    for n in names:
        r = P[n]
        leaf = r.get("leaf") or {}
        row = [r["label"], (r.get("version") or "-")[:18], leaf.get("key") or "-",
               num(dig(r, "conn", "median")), num(dig(r, "conn", "proxy_cpu_us_per_op"))]
        row += [num(dig(r, f"ka{c}", "median")) for c in kac]
        row += [num(dig(r, f"ka{kac[0]}", "proxy_cpu_us_per_op")), num(dig(r, "dl", "median_mb_per_s")),
                num(mib(dig(r, "dl", "rss_growth_kib_max")), "{:+.1f} MiB"),
                num(mib(dig(r, "slow", "rss", "growth_kib")), "{:+.1f} MiB"),
                num(mib(r.get("rss_start_kib")), "{:.1f} MiB")]
        rows.append(row)
    L += table(hdr, rows)
    for n in names:
        r = P[n]
        if r.get("error"):
            L.append(f"  ! {r['label']}: {r['error']}")
        for k in ["conn"] + [f"ka{c}" for c in kac]:
            L += benchlib.invalid_runs(r["label"], k, r.get(k), "first_error")
        L += benchlib.invalid_runs(r["label"], "download", r.get("dl"))
        v = r.get("slow")
        if v and not v.get("valid"):
            L.append(f"  ! {r['label']} slow reader: {v.get('error')}")
    pd = P.get("proxyd")
    peers = [n for n in names if n not in ("baseline", "proxyd")]
    if pd and peers:
        L.append("")
        L.append("proxyd / peer (CPU columns: peer's CPU per operation / proxyd's):")
        hdr2 = (["peer", "new conn/s", "CPU/conn"]
                + [x for c in kac for x in (f"ka req/s c={c}", f"CPU/req c={c}")] + ["download MB/s", "CPU/MB"])
        rows2 = []
        for n in peers:
            r = P[n]
            row = [r["label"], ratio(dig(pd, "conn", "median"), dig(r, "conn", "median")),
                   ratio(dig(r, "conn", "proxy_cpu_us_per_op"), dig(pd, "conn", "proxy_cpu_us_per_op"))]
            for c in kac:
                k = f"ka{c}"
                row += [ratio(dig(pd, k, "median"), dig(r, k, "median")),
                        ratio(dig(r, k, "proxy_cpu_us_per_op"), dig(pd, k, "proxy_cpu_us_per_op"))]
            row.append(ratio(dig(pd, "dl", "median_mb_per_s"), dig(r, "dl", "median_mb_per_s")))
            row.append(ratio(_dl_cpu_ms_per_mb(r), _dl_cpu_ms_per_mb(pd)))
            rows2.append(row)
        L += table(hdr2, rows2)
    if pd:
        L += benchlib.target_lines("issue 4", TARGETS, check_targets(results))
        L.append(f"  (the issue's figures for the peers on this machine: {ISSUE_FIGURES})")
    L.append("")
    b = P.get("baseline")
    if b:
        L.append("client ceiling (the same client straight to the origin, no proxy): "
                 f"{num(dig(b, 'conn', 'median'))} new conn/s, "
                 + ", ".join(f"{num(dig(b, f'ka{c}', 'median'))} keep-alive req/s c={c}" for c in kac)
                 + f", curl {num(dig(b, 'dl', 'median_mb_per_s'))} MB/s. Client CPU per new connection "
                 f"{num(dig(b, 'conn', 'client_cpu_us_per_op'))} us direct"
                 + (f", {num(dig(pd, 'conn', 'client_cpu_us_per_op'))} us through proxyd (CONNECT added)"
                    if pd else "") + ".")
    heads = benchlib.saturation(P, [n for n in names if n != "baseline"], ["conn"] + [f"ka{c}" for c in kac])
    if heads:
        L.append("where core 0 (client + nginx) would be saturated, from its share at the measured rate "
                 "(the client is not the limit while a proxy's rate stays well under this): " + ", ".join(heads))
    shares = []
    for n in names:
        if n == "baseline":
            continue
        parts = [f"{k} {num(dig(P[n], k, 'proxy_cpu_share'), '{:.2f}')}"
                 f"/{num(dig(P[n], k, 'client_core_share'), '{:.2f}')}"
                 for k in ["conn"] + [f"ka{c}" for c in kac] + ["dl"] if P[n].get(k)]
        if parts:
            shares.append(f"{P[n]['label']}: " + ", ".join(parts))
    if shares:
        L.append("CPU share during the runs, proxy core / client core (1.00 = the core was busy the whole run; "
                 "a proxy near 1.00 with the client core well under 1.00 means the proxy was the limit): "
                 + "; ".join(shares))
    L += benchlib.machine_lines(results, names, ["conn", "dl"] + [f"ka{c}" for c in kac])
    L.append("dRSS = peak VmRSS (process and children) during the download minus VmRSS just before; "
             "CPU us = the proxy's own user+system CPU per connection or request.")
    return "\n".join(L)


def _dl_cpu_ms_per_mb(r):
    """Median over valid downloads of the proxy's CPU milliseconds per MB relayed."""
    xs = [x["proxy_cpu_share"] * x["time_total"] * 1e3 / (x["size"] / 1e6)
          for x in (dig(r, "dl", "runs") or [])
          if x.get("valid") and x.get("proxy_cpu_share") and x.get("time_total") and x.get("size")]
    return statistics.median(xs) if xs else None


def check_targets(results):
    P = results["proxies"]
    pd = P["proxyd"]
    kac = results["meta"]["options"]["ka_concurrency"]
    verdict, ge = benchlib.Verdicts(), benchlib.at_least

    def cpu(k, name):   # the proxy's CPU per operation: the same comparison, free of core sharing
        return dig(P, name, k, "proxy_cpu_us_per_op")

    v, mm = dig(pd, "conn", "median"), dig(P, "mitmdump", "conn", "median")
    verdict("new conn/s >= 3x mitmdump", ge(v, mm, 3), f"{num(v)} vs 3 x {num(mm)}")
    v, mm = cpu("conn", "proxyd"), cpu("conn", "mitmdump")
    verdict("  (CPU) us per new conn <= mitmdump's / 3", ge(mm, v, 3), f"{num(v)} vs {num(mm)} / 3")
    for c in kac:
        k = f"ka{c}"
        v, pp, mm = dig(pd, k, "median"), dig(P, "proxypy", k, "median"), dig(P, "mitmdump", k, "median")
        verdict(f"keep-alive req/s c={c} >= proxy.py", ge(v, pp), f"{num(v)} vs {num(pp)}")
        verdict(f"keep-alive req/s c={c} >= 3x mitmdump", ge(v, mm, 3), f"{num(v)} vs 3 x {num(mm)}")
        v, pp, mm = cpu(k, "proxyd"), cpu(k, "proxypy"), cpu(k, "mitmdump")
        verdict(f"  (CPU) us per request c={c} <= proxy.py's", ge(pp, v), f"{num(v)} vs {num(pp)}")
        verdict(f"  (CPU) us per request c={c} <= mitmdump's / 3", ge(mm, v, 3), f"{num(v)} vs {num(mm)} / 3")
    v, mm = dig(pd, "dl", "median_mb_per_s"), dig(P, "mitmdump", "dl", "median_mb_per_s")
    verdict("download MB/s >= 1.5x mitmdump", ge(v, mm, 1.5), f"{num(v)} vs 1.5 x {num(mm)}")
    v, mm = _dl_cpu_ms_per_mb(pd), _dl_cpu_ms_per_mb(P.get("mitmdump"))
    verdict("  (CPU) ms per MB downloaded <= mitmdump's / 1.5", ge(mm, v, 1.5),
            f"{num(v, '{:.2f}')} vs {num(mm, '{:.2f}')} / 1.5")
    s = dig(pd, "slow", "rss", "growth_kib")
    verdict("slow-reader RSS growth < 2 MiB", None if s is None else s < 2048, f"{num(mib(s), '{:+.1f}')} MiB")
    return verdict


# --------------------------------------------------------------------- main

def parse_args(argv):
    ap = benchlib.arg_parser("bench/mitm.sh", __doc__)
    ap.add_argument("--proxies", default=",".join(DEFAULT_PROXIES),
                    help=f"comma-separated, from {','.join(ALL_PROXIES)} (proxyd-rsa: proxyd --leaf-key rsa)")
    ap.add_argument("--measure", default=",".join(ALL_MEASURES), help=f"comma-separated, from {','.join(ALL_MEASURES)}")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 run of 2 s, 1 download, 5 s slow reader")
    ap.add_argument("--runs", type=int, default=5, help="runs per conn/ka measurement (median)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per conn/ka run")
    ap.add_argument("--conn-concurrency", type=int, default=10, help="client processes for new conn/s")
    ap.add_argument("--ka-concurrency", default="1,10", help="keep-alive connection counts")
    ap.add_argument("--client-procs", type=int, default=2,
                    help="client worker processes (each an event loop over its share of the connections)")
    ap.add_argument("--dl-runs", type=int, default=3, help="1 GiB downloads per proxy (median)")
    ap.add_argument("--dl-max-time", type=int, default=60,
                    help="seconds allowed per download; a proxy that times out gets no further runs")
    ap.add_argument("--slow-seconds", type=int, default=20, help="length of the 1 MB/s slow-reader download")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of /big, MiB")
    benchlib.add_common_args(ap, 18950, "origin on this port, proxies on the next ones (127.0.0.1); run.py uses 18900+",
                             "core for the client, curl, nginx and this script",
                             "core for nginx (default: --client-cpu; 'none' = not pinned)",
                             "no apt-get; use the venvs as they are")
    return benchlib.parse(ap, argv, ALL_PROXIES, ALL_MEASURES,
                          quick={"runs": 1, "duration": 2, "dl_runs": 1, "slow_seconds": 5},
                          ranges=(("runs", 1, 50), ("duration", 1, 120), ("dl_runs", 1, 20), ("slow_seconds", 2, 300),
                                  ("big_mib", 1, 16384), ("dl_max_time", 5, 3600), ("conn_concurrency", 1, 200),
                                  ("client_procs", 1, 32)),
                          numbers=(("ka_concurrency", 1, 200),))


def main(argv=None):
    return benchlib.main(argv, parse_args, render, bench)


def bench(a, argv):
    # this script and everything it forks (client workers, curl) stay off the proxy core
    started = benchlib.begin(PROCS, WORK, RESULTS, pin=a.client_cpu)
    atexit.register(_stop_clients)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    benchlib.ensure_debian(["nginx", "curl", "openssl", "taskset"], a.no_install, DEBIAN_PACKAGES)

    origin_ca, crt, key = make_origin_pki()
    origin_port = a.port_base
    proxies = benchlib.make_proxies(PROXY_CLASSES, a, WORK, origin_port, origin_ca)

    results = benchlib.new_results(
        started, "bench/mitm.sh", argv, a,
        "proxies measure runs duration conn_concurrency ka_concurrency dl_runs dl_max_time slow_seconds big_mib "
        "proxy_cpu client_cpu origin_cpu client_procs origin_port quick", "nginx curl openssl",
        proxyd_git=benchlib.git_info(a.proxyd_src))
    out_json = RESULTS / f"mitm-{stamp}.json"
    save = benchlib.saver(results, out_json)

    big_size = benchlib.prepare_www(WORK, a.big_mib, b"proxyd mitm bench small response body.\n",
                                    big_from=BENCH / ".work" / "www" / "big")   # run.py's, if it is there
    origin = start_origin(origin_port, a.origin_cpu, crt, key)
    live = []   # (proxy, pid or None for the baseline)
    try:
        for px in proxies:
            p, res = start_proxy(a, px)
            results["proxies"][px.name] = res
            if p is not None or (px.name == "baseline" and res["ok"]):
                live.append((px, p.pid if p else None, p))
        save()
        targets = [(px, pid) for px, pid, _ in live]
        idle = results["idle_cpu_share"] = {}
        if "conn" in a.measure and targets:
            idle["before conn"] = idle_check(targets, "conn")
            log(f"=== new intercepted connections/s, c={a.conn_concurrency} ===")
            benchlib.record(results, "conn", measure_clients(a, "conn", a.conn_concurrency, targets, origin.pid), save)
        if "ka" in a.measure and targets:
            for c in a.ka_concurrency:
                log(f"=== keep-alive requests/s, c={c} ===")
                idle[f"before ka c={c}"] = idle_check(targets, f"ka c={c}")
                benchlib.record(results, f"ka{c}", measure_clients(a, "ka", c, targets, origin.pid), save)
        if "dl" in a.measure and targets:
            log(f"=== {a.big_mib} MiB download ===")
            idle["before dl"] = idle_check(targets, "dl")
            benchlib.record(results, "dl", measure_download(a, targets, big_size, origin.pid), save)
        for px, pid, p in live:
            if p is None:
                continue
            res = results["proxies"][px.name]
            if "slow" in a.measure:
                idle[f"before slow {px.name}"] = idle_check(targets, f"slow {px.name}")
                res["slow"] = measure_slow(a, px, pid)
            time.sleep(1.0)
            res["rss_end_kib"] = rss_kib(pid)
            if p.poll() is not None:
                res["error"] = (res.get("error") or "") + f" exited ({p.returncode}) during the bench"
            save()
    finally:
        _stop_clients()
        for px, pid, p in live:
            if p is not None:
                PROCS.stop(p)
        PROCS.stop_all()
    return benchlib.finish(results, out_json, render)

if __name__ == "__main__":
    sys.exit(main())
