"""
What bench/run.py, bench/mitm.py and bench/reverse.py share: bounded
subprocesses, the processes a bench starts (each in its own group, stopped
at exit), port waits, RSS and CPU of a process tree, Debian packages and
venvs, proxyd installed from a copy of the work tree, the nginx origin and
its config, the proxies the benches run (proxyd, mitmdump, proxy.py, a
proxy from its Debian package: install, argv, start), wrk's BENCHJSON line,
curl downloads, interleaved rounds and their medians, the command line, the
start and end of a run, and the helpers the result tables are built with.

Set LABEL to name the bench in messages.
"""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

LABEL = "bench"
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
WRK_LUA = BENCH / "wrk-proxy.lua"   # run.py's wrk script
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SMALL_SIZE = 1024        # the origin's /small


def log(msg):
    print(f"[{LABEL} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def on_signal(signum, frame):
    raise SystemExit(f"{LABEL}: signal {signum}, stopping")


class Procs:
    """Every long-running process the bench starts; stopped at exit."""

    def __init__(self):
        self.procs = []   # (name, Popen)

    def start(self, name, argv, cpu=None, cwd=None, env=None, logfile=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)
        log(f"start {name}: {' '.join(shlex.quote(str(a)) for a in argv)}")
        out = open(logfile, "ab") if logfile else subprocess.DEVNULL
        try:
            p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if logfile:
                out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, timeout=10.0):
        """SIGTERM the process group we created for p, SIGKILL after timeout."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group may still hold children (proxy.py workers, nginx workers)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} did not exit after SIGKILL")
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self):
        for name, p in list(reversed(self.procs)):
            log(f"stop {name} (pid {p.pid})")
            self.stop(p, timeout=5.0)


def run(argv, timeout, check=True, cpu=None, env=None, cwd=None, quiet=False, input=None):
    """Run a short command, bounded in time."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + list(argv)
    argv = [str(a) for a in argv]
    if not quiet:
        log("run: " + " ".join(shlex.quote(a) for a in argv))
    p = subprocess.run(argv, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                       capture_output=True, timeout=timeout, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return p


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def wait_port(port, proc=None, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(pid):
    kids = _children_map()
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kib(pid):
    """VmRSS of pid and all its descendants, KiB (shared pages counted per process)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    """user+system CPU time of pid and its descendants, seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class RssSampler:
    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < 3600:
            self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.before = rss_kib(self.pid) if self.pid else 0
        if self.pid:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid:
            self._t.join(5)
            self.after = rss_kib(self.pid)
        else:
            self.after = 0

    def result(self):
        if not self.pid:
            return None
        peak = max(self.samples + [self.before, self.after])
        return {"before_kib": self.before, "peak_kib": peak, "after_kib": self.after,
                "growth_kib": peak - self.before, "samples": len(self.samples)}


def ensure_debian(binaries, no_install, packages):
    missing = sorted({packages[b] for b in binaries if not shutil.which(b)})
    if not missing:
        return
    if no_install:
        raise SystemExit(f"{LABEL}: missing Debian packages {missing} and --no-install given")
    if os.geteuid() != 0:
        raise SystemExit(f"{LABEL}: need root to apt-get install {missing}")
    # A package's postinst must not start the system's own squid/nginx/tinyproxy
    # (ports 3128/80/8888, system configs): forbid service starts while installing.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text(f"#!/bin/sh\n# temporary, written by proxyd {LABEL}\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], timeout=600, env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing, timeout=1200, env=env)
    finally:
        if made_policy:
            policy.unlink()
    still = [b for b in binaries if not shutil.which(b)]
    if still:
        raise SystemExit(f"{LABEL}: still missing after apt-get install: {still}")


def venv(work, name, python, packages, upgrade=False):
    """WORK/venv-NAME with PACKAGES pip-installed once (marker file)."""
    d = work / f"venv-{name}"
    marker = d / ".bench-installed"
    want = " ".join(packages)
    if marker.exists() and marker.read_text() == want and not upgrade:
        return d
    if not (d / "bin" / "python").exists():
        run([python, "-m", "venv", d], timeout=300)
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"],
        timeout=600, check=False)
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check"]
        + (["--upgrade"] if upgrade else []) + list(packages), timeout=1800)
    marker.write_text(want)
    return d


def pip_version(d, dist):
    p = run([d / "bin" / "python", "-c",
             f"import importlib.metadata as m; print(m.version({dist!r}))"], timeout=60, check=False,
            quiet=True)
    return p.stdout.decode().strip() or None


def deb_version(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, timeout=30)
    return p.stdout.decode().strip() or None


# ------------------------------------------------------------------ proxyd


def proxyd_source(src, dst, ref=None):
    """A copy of the proxyd tree SRC in DST to install from, so nothing is built inside the repo.

    Without ref: the work tree as it is (tracked and untracked-but-not-ignored files,
    bench/ left out). With ref: `git archive REF`.
    """
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if ref:
        arch = run(["git", "-C", src, "archive", "--format=tar", ref], timeout=120, quiet=True).stdout
        subprocess.run(["tar", "-x", "-C", dst], input=arch, check=True, timeout=120)
        return dst
    files = run(["git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                timeout=60, quiet=True).stdout.split(b"\0")
    for f in files:
        rel = f.decode()
        if not rel or rel.startswith("bench/"):
            continue
        s, d = Path(src) / rel, dst / rel
        if s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)
    return dst


def git_info(src, ref=None):
    """Which proxyd is measured: a commit (ref) or the work tree at HEAD plus its changes."""
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


_PROXYD_VENVS = {}   # (work, src, ref) -> venv: installed once per run (proxyd and its variants)


def install_proxyd(work, python, src, ref, deps):
    """WORK/venv-proxyd: DEPS once (cached), then proxyd from a copy of SRC (or commit REF),
    reinstalled on every run so the bench measures what is there now."""
    key = (str(work), str(src), ref)
    if key not in _PROXYD_VENVS:
        d = venv(work, "proxyd", python, deps)
        tree = proxyd_source(src, work / "proxyd-src", ref)
        run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", tree], timeout=1800)
        run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
             "--force-reinstall", tree], timeout=600)
        _PROXYD_VENVS[key] = d
    return _PROXYD_VENVS[key]


# ------------------------------------------------------------------ origin


def prepare_www(work, big_mib, small_line, big_from=None):
    """WORK/www/small (SMALL_SIZE bytes of SMALL_LINE repeated) and WORK/www/big (BIG_MIB MiB
    of random bytes, made once, or hard-linked from BIG_FROM if that has the size).
    Returns the size of big."""
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    small = www / "small"
    if not small.exists() or small.stat().st_size != SMALL_SIZE:
        small.write_bytes((small_line * 64)[:SMALL_SIZE - 1] + b"\n")
    big = www / "big"
    size = big_mib * 1024 * 1024
    if not big.exists() or big.stat().st_size != size:
        if big.exists():
            big.unlink()
        try:
            if big_from is not None and big_from.stat().st_size == size:
                os.link(big_from, big)      # same bytes, no copy
        except OSError:
            pass
        if not big.exists():
            log(f"generating {big} ({big_mib} MiB of random bytes, once)")
            tmp = big.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                for _ in range(big_mib):
                    f.write(os.urandom(1024 * 1024))
            tmp.rename(big)
    for p in (work, www):
        p.chmod(0o755)
    for p in (small, big):
        p.chmod(0o644)
    return size


def nginx_conf(d, comment, first, rest):
    """An nginx config with its pid, logs and temp dirs under D (made here), never the
    system's: one worker, in the foreground, no access log, tcp_nodelay, keep-alive.

    comment: its first line; first: http-block lines before tcp_nodelay; rest: the
    http block's lines after the keep-alive ones (upstreams, servers)."""
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""\
# {comment}
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
{first}    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 10000000;
{rest}}}
"""


def start_nginx(procs, work, port, cpu, comment, listen="", server=(), tcp_nopush=False):
    """nginx serving WORK/www on 127.0.0.1:PORT with its own config, pid, logs and temp
    dirs under WORK/nginx (never the system's): one worker, keep-alive, no access log.

    comment: the config's first line; listen: appended to the listen address (" ssl");
    server: more lines for the server block."""
    d = work / "nginx"
    conf = d / "nginx.conf"
    nopush = "    tcp_nopush on;\n" if tcp_nopush else ""
    more = "".join(f"        {line}\n" for line in server)
    conf.write_text(nginx_conf(d, comment, f"""\
    default_type application/octet-stream;
    sendfile on;
{nopush}""", f"""\
    server {{
        listen {LOOPBACK}:{port}{listen};
{more}        root {work}/www;
        location / {{ }}
    }}
"""))
    if not port_free(port):
        raise SystemExit(f"{LABEL}: origin port {port} is busy (use --port-base)")
    p = procs.start("nginx", ["nginx", "-p", f"{d}/", "-e", d / "error.log", "-c", conf], cpu=cpu,
                    logfile=d / "stdout.log")
    if not wait_port(port, p, 20):
        raise SystemExit(f"{LABEL}: nginx did not start; see {d}/error.log")
    return p


def check_small(port, what):
    """GET /small from the plain-HTTP server on 127.0.0.1:PORT: SMALL_SIZE bytes with 200, or exit."""
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
    c.request("GET", "/small")
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or len(body) != SMALL_SIZE:
        raise SystemExit(f"{LABEL}: {what} answered {r.status} with {len(body)} bytes")


# ----------------------------------------------------------------- proxies


class Proxy:
    """How to install, configure and start one proxy; a bench subclasses it.

    pypi: (venv name, pip packages, distribution) of a proxy pip-installed into
    WORK/venv-NAME; the distribution's version is the one reported."""

    name = label = "?"
    pypi = None

    def __init__(self, work, args, port, origin_port):
        self.work, self.args, self.port, self.origin_port = work, args, port, origin_port
        self.dir = work / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version = None
        self.flags = ""

    def install(self):
        if self.pypi:
            name, packages, dist = self.pypi
            self.venv = venv(self.work, name, self.args.python, packages, upgrade=self.args.upgrade)
            self.version = pip_version(self.venv, dist)

    def use_installed(self):
        """install() under --no-install: the venv as it is (Debian packages: just their version)."""
        if not self.pypi:
            return self.install()
        self.venv = self.work / f"venv-{self.pypi[0]}"
        if not (self.venv / "bin" / "python").exists():
            raise SystemExit(f"{LABEL}: {self.venv} missing and --no-install given")
        self.version = pip_version(self.venv, self.pypi[2])

    def prepare(self):
        pass

    def command(self):
        """The argv every run of this proxy has, whatever the bench."""
        raise NotImplementedError

    def options(self):
        """What this bench adds to command()."""
        return []

    def argv(self):
        return self.record(self.command() + self.options())

    def record(self, argv):
        """argv, its arguments kept in self.flags for the results."""
        self.flags = " ".join(str(x) for x in argv[1:])
        return argv

    def env(self):
        return None

    def home_env(self):
        """The environment with HOME in the proxy's own directory."""
        (self.dir / "home").mkdir(exist_ok=True)
        return dict(os.environ, HOME=str(self.dir / "home"))

    def after_start(self, proc):
        """Wait for what the proxy writes at start. Returns an error or None."""
        return None


class Proxyd(Proxy):
    """`twistd -n --pidfile= proxyd MODE --listen tcp:PORT:interface=127.0.0.1 --connect-ports '*'
    OPTIONS --proxyd-args`, installed from the work tree (or args.proxyd_ref) with DEPS."""

    name, label = "proxyd", "proxyd"
    pypi = ("proxyd", None, "proxyd")   # for use_installed(); install() is install_proxyd
    deps = ("wheel",)
    mode = ()

    def install(self):
        ref = getattr(self.args, "proxyd_ref", None)
        self.git = git_info(self.args.proxyd_src, ref)
        self.venv = install_proxyd(self.work, self.args.python, self.args.proxyd_src, ref, list(self.deps))
        (self.venv / ".proxyd-source.json").write_text(json.dumps(self.git))
        self._version()

    def use_installed(self):
        Proxy.use_installed(self)
        # what the last install put there, not what the tree holds now
        mark = self.venv / ".proxyd-source.json"
        self.git = json.loads(mark.read_text()) if mark.exists() else {"commit": None}
        self._version()

    def _version(self):
        self.version = pip_version(self.venv, "proxyd")
        if self.git.get("commit"):
            self.version = f"{self.version} @{self.git['commit'][:10]}"

    def command(self):
        return ([self.venv / "bin" / "twistd", "-n", "--pidfile=", "proxyd"] + list(self.mode)
                + ["--listen", f"tcp:{self.port}:interface={LOOPBACK}", "--connect-ports", "*"])

    def argv(self):
        return self.record(self.command() + self.options() + shlex.split(self.args.proxyd_args or ""))


class Mitmdump(Proxy):
    """`mitmdump --listen-host 127.0.0.1 -p PORT -q --set confdir=DIR/confdir
    --set stream_large_bodies=1m`, from PyPI `mitmproxy`. stream_large_bodies: without
    it mitmdump holds every body whole in memory (a 1 GiB download = 1 GiB RSS);
    streaming is how it is run as a forward proxy."""

    name, label = "mitmdump", "mitmdump"
    pypi = ("mitmproxy", ["mitmproxy"], "mitmproxy")

    def env(self):
        return self.home_env()

    def command(self):
        return [self.venv / "bin" / "mitmdump", "--listen-host", LOOPBACK, "-p", self.port, "-q",
                "--set", f"confdir={self.dir / 'confdir'}", "--set", "stream_large_bodies=1m"]


class ProxyPy(Proxy):
    """`proxy --hostname 127.0.0.1 --port PORT --num-acceptors 1 --num-workers 1
    --log-level WARNING --data-dir DIR/data`, from PyPI `proxy.py`: one acceptor process
    (beside the main one) that also does the work (threadless, local executor: its
    defaults), on the one pinned core like the others. No access log lines (proxy.py
    logs every request at INFO)."""

    name, label = "proxypy", "proxy.py"
    pypi = ("proxypy", ["proxy.py"], "proxy.py")

    def env(self):
        return self.home_env()

    def command(self):
        return [self.venv / "bin" / "proxy", "--hostname", LOOPBACK, "--port", self.port,
                "--num-acceptors", "1", "--num-workers", "1", "--log-level", "WARNING",
                "--data-dir", self.dir / "data"]


class DebianProxy(Proxy):
    """A proxy from its Debian package (PACKAGE, default: its name), run in the foreground as
    head() + its config file (made by conf_text()); flags: those arguments, the config file
    as its name (as its path with FLAGS_CONF_PATH), and SUMMARY, what the config sets."""

    package = command_head = summary = None
    flags_conf_path = False

    def install(self):
        self.version = deb_version(self.package or self.name)

    def prepare(self):
        self.conf = self.dir / f"{self.name}.conf"
        self.conf.write_text(self.conf_text())

    def head(self):
        return list(self.command_head)

    def argv(self):
        head = self.head()
        shown = [str(x) for x in head[1:]] + [str(self.conf) if self.flags_conf_path else self.conf.name]
        self.flags = f"{' '.join(shown)} ({self.summary})"
        return head + [self.conf]


def make_proxies(classes, a, work, origin_port, *extra):
    """classes[name](work, a, port, origin_port, *extra) for each of a.proxies, on the ports after
    origin_port, installed (with --no-install: as they are)."""
    proxies = []
    for i, name in enumerate(a.proxies):
        px = classes[name](work, a, origin_port + 1 + i, origin_port, *extra)
        if a.no_install:
            px.use_installed()
        else:
            px.install()
        proxies.append(px)
    return proxies


def launch(procs, px, res, cpu, timeout):
    """Start px pinned to CPU and wait until it listens and after_start() is content; then
    1 s idle and its RSS (res["rss_start_kib"]). Returns the Popen, or None with res["error"]."""
    if not port_free(px.port):
        res["error"] = f"port {px.port} busy"
        return None
    px.prepare()
    argv = px.argv()
    res["flags"] = px.flags
    if getattr(px, "git", None):
        res["git"] = px.git
    p = procs.start(px.name, argv, cpu=cpu, cwd=px.dir, env=px.env(), logfile=px.dir / "output.log")
    if not wait_port(px.port, p, timeout):
        err = (f"did not listen on {px.port} within {timeout} s (exit {p.poll()}); "
               f"see {px.dir / 'output.log'}")
    else:
        err = px.after_start(p)
    if err:
        res["error"] = err
        log(f"{px.name}: {err}")
        procs.stop(p)
        return None
    time.sleep(1.0)
    res["rss_start_kib"] = rss_kib(p.pid)
    return p


# --------------------------------------------------------------- measuring


def curl_json(argv, timeout, cpu):
    """curl ARGV with the body dropped: (exit code, its -w %{json} as a dict, stderr)."""
    p = run(["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{json}"] + argv, timeout=timeout,
            check=False, cpu=cpu, quiet=True)
    try:
        w = json.loads(p.stdout.decode() or "{}")
    except ValueError:
        w = {}
    return p.returncode, w, p.stderr.decode(errors="replace").strip()


def wrk_done_lua():
    """The done() of run.py's wrk script (WRK_LUA, to its end): the one BENCHJSON line of
    counts every bench's wrk script writes when wrk stops."""
    text = WRK_LUA.read_text()
    return text[text.index("function done("):]


def download_record(rc, w, rss, **more):
    """One curl download (its exit code RC, its -w %{json} W, RSS samples RSS) as a result:
    bytes, status, seconds, MB/s, RSS, the load average now, then MORE."""
    return {"curl_exit": rc, "size": w.get("size_download", 0), "http_code": w.get("http_code"),
            "time_total": w.get("time_total") or 0, "mb_per_s": (w.get("speed_download") or 0) / 1e6,
            "rss": rss, "loadavg": round(os.getloadavg()[0], 2), **more}


def judge_download(r, err, big_size):
    """r["valid"]: the download R got all BIG_SIZE bytes with 200 and curl exited 0; else
    r["error"] (ERR: curl's stderr). True when a further try is pointless: curl gave up at
    its --max-time (too slow or stalled), another would take as long again."""
    rc, size = r["curl_exit"], r["size"]
    r["valid"] = rc == 0 and size == big_size and r["http_code"] == 200
    if r["valid"]:
        return False
    r["error"] = f"curl exit {rc}, {size / 1e6:.1f} of {big_size / 1e6:.0f} MB, {err[-200:]}"
    if rc == 28:
        r["error"] += " (no further runs)"
        return True
    return False


def log_download(name, i, n, r):
    """The log line of NAME's download R, run I of N."""
    log(f"{name} download run {i + 1}/{n}: "
        + (f"{r['mb_per_s']:.0f} MB/s" if r["valid"] else f"INVALID ({r['error']})")
        + (f", proxy core {r['proxy_cpu_share']:.2f}" if r.get("proxy_cpu_share") is not None else "")
        + (f", client core {r['client_core_share']:.2f}" if r.get("client_core_share") is not None else "")
        + (f", RSS +{r['rss']['growth_kib'] / 1024:.1f} MiB" if r["rss"] else ""))


def medians(rs, *keys):
    """{key: the median of r[key] over the runs RS where it is not None (None if none)} for KEYS."""
    out = {}
    for k in keys:
        xs = [r[k] for r in rs if r.get(k) is not None]
        out[k] = statistics.median(xs) if xs else None
    return out


def download_summary(rs, *keys):
    """Downloads' results RS: the median MB/s of the valid ones, the median of each of KEYS
    over them, the largest RSS growth."""
    good = [r for r in rs if r["valid"]]
    growth = [r["rss"]["growth_kib"] for r in rs if r["rss"]]
    out = {"median_mb_per_s": medians(good, "mb_per_s")["mb_per_s"], "valid_runs": len(good)}
    out.update(medians(good, *keys))
    out.update(rss_growth_kib_max=max(growth) if growth else None, runs=rs)
    return out


def rate_summary(rs, conc, keys, more=None):
    """Rate runs RS at concurrency CONC: over the valid ones the median rate (as "median") and
    the median of each of KEYS, then what MORE(valid runs) adds, the count of valid runs, RS."""
    good = [r for r in rs if r["valid"]]
    m = medians(good, "rate", *keys)
    return {"median": m.pop("rate"), **m, **(more(good) if more else {}),
            "valid_runs": len(good), "runs": rs, "concurrency": conc}


def rotated(items, i):
    """items in a different order each round, so no proxy always runs first or last."""
    k = i % len(items)
    return items[k:] + items[:k]


def rounds(items, n):
    """(i, item) for N interleaved rounds: round i runs every one of ITEMS once, rotated."""
    for i in range(n):
        for item in rotated(items, i):
            yield i, item


def idle_check(pids, phase, seconds=1.0):
    """CPU each proxy of PIDS ({name: pid}) uses over SECONDS while nobody talks to it: one
    still busy with an earlier, abandoned connection would steal the shared proxy core from
    the next one measured. Returns {name: core share}, logs the busy ones."""
    c0 = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    out = {n: round((cpu_seconds(p) - c0[n]) / dt, 3) for n, p in pids.items()}
    busy = {n: v for n, v in out.items() if v > 0.05}
    if busy:
        log(f"warning: before {phase}, idle proxies used CPU: {busy}")
    return out


# ------------------------------------------------------------ a run: start, end


def arg_parser(prog, doc):
    """The command line's parser: DOC's first paragraph, defaults shown."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_common_args(ap, port_base, port_help, client_cpu_help, origin_cpu_help, no_install_help,
                    proxyd_ref=False):
    """The options every bench has, from --port-base to --render (the last ones in --help)."""
    ap.add_argument("--port-base", type=int, default=port_base, help=port_help)
    ap.add_argument("--proxy-cpu", type=int, default=1, help="core every proxy is pinned to")
    ap.add_argument("--client-cpu", type=int, default=0, help=client_cpu_help)
    ap.add_argument("--origin-cpu", default=None, help=origin_cpu_help)
    ap.add_argument("--start-timeout", type=int, default=60, help="seconds a proxy may take to listen")
    ap.add_argument("--python", default=sys.executable, help="Python used to make the venvs")
    ap.add_argument("--proxyd-src", default=str(REPO), help="proxyd work tree to install")
    if proxyd_ref:
        ap.add_argument("--proxyd-ref", default=None,
                        help="install this git commit of --proxyd-src instead of its work tree")
    ap.add_argument("--proxyd-args", default="", help="extra arguments for `twistd proxyd`")
    ap.add_argument("--no-install", action="store_true", help=no_install_help)
    ap.add_argument("--upgrade", action="store_true", help="re-run pip install in the peers' venvs")
    ap.add_argument("--render", metavar="JSON", help="only print the table of a saved results file")


def split_choices(ap, a, all_proxies, all_measures):
    """--proxies and --measure as lists of known names."""
    a.proxies = [p.strip() for p in a.proxies.split(",") if p.strip()]
    a.measure = [m.strip() for m in a.measure.split(",") if m.strip()]
    bad = [p for p in a.proxies if p not in all_proxies] + [m for m in a.measure if m not in all_measures]
    if bad:
        ap.error(f"unknown proxy or measurement: {', '.join(bad)}")


def parse(ap, argv, all_proxies, all_measures, quick, ranges, numbers=()):
    """ARGV parsed by AP. Unless it asks for --render: --proxies and --measure as lists
    (split_choices), each (option, lo, hi) of NUMBERS a comma-separated list of whole numbers
    within lo..hi, the options QUICK ({option: value}) sets under --quick, RANGES checked
    (check_args)."""
    a = ap.parse_args(argv)
    if a.render:
        return a
    split_choices(ap, a, all_proxies, all_measures)
    for name, lo, hi in numbers:
        values = [int(c) for c in getattr(a, name).split(",") if c.strip()]
        if not values or any(not lo <= c <= hi for c in values):
            ap.error(f"--{name.replace('_', '-')}: numbers {lo}..{hi}")
        setattr(a, name, values)
    if a.quick:
        for name, value in quick.items():
            setattr(a, name, value)
    check_args(ap, a, ranges)
    return a


def check_args(ap, a, ranges):
    """Each (option, lo, hi) of RANGES within lo..hi; --origin-cpu: a core, 'none' (None) or --client-cpu."""
    for name, lo, hi in ranges:
        if not lo <= getattr(a, name) <= hi:
            ap.error(f"--{name.replace('_', '-')} must be {lo}..{hi}")
    if a.origin_cpu is None:
        a.origin_cpu = a.client_cpu
    elif a.origin_cpu == "none":
        a.origin_cpu = None
    else:
        try:
            a.origin_cpu = int(a.origin_cpu)
        except ValueError:
            ap.error("--origin-cpu: a core number or 'none'")


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


def main(argv, parse_args, render, bench):
    """A bench's command line: ARGV (None: this process's) parsed by PARSE_ARGS; with --render,
    that saved results file printed by RENDER; else BENCH(args, argv) run. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return 0
    return bench(a, argv)


def begin(procs, work, results_dir, pin=None):
    """Signals end the run (and PROCS with it, at exit); WORK and RESULTS_DIR made; with PIN,
    this script and all it starts from now on pinned to that core (off the proxy core).
    Returns the start time."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    atexit.register(procs.stop_all)
    if pin is not None:
        try:
            os.sched_setaffinity(0, {pin})
        except OSError as e:
            log(f"warning: could not pin to core {pin}: {e}")
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    return datetime.datetime.now().astimezone()


def new_results(started, script, argv, a, options, versions, **meta):
    """A run's results, no proxies yet: its meta, with the start time, the command line (SCRIPT
    ARGV), the host, OPTIONS (the values of these attributes of A; origin_port: --port-base),
    the Debian VERSIONS of these packages (nginx: nginx-core, nginx-light or nginx), then META."""
    def version(package):
        if package == "nginx":
            return deb_version("nginx-core") or deb_version("nginx-light") or deb_version("nginx")
        return deb_version(package)
    return {"meta": {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(x) for x in [script] + list(argv)),
        "host": host_info(),
        "options": {k: a.port_base if k == "origin_port" else getattr(a, k) for k in options.split()},
        "versions": {package: version(package) for package in versions.split()},
        **meta,
    }, "proxies": {}}


def saver(results, out_json):
    """A function that saves RESULTS, as they are when it is called, to OUT_JSON."""
    return lambda: out_json.write_text(json.dumps(results, indent=1))


def record(results, key, measured, save):
    """Each proxy's results of one measurement, MEASURED ({proxy name: results}), under KEY; saved."""
    for name, r in measured.items():
        results["proxies"][name][key] = r
    save()


def finish(results, out_json, render):
    """The run's end: results saved to OUT_JSON, rendered, the table printed and saved beside it."""
    results["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out_json.write_text(json.dumps(results, indent=1))
    table_text = render(results)
    out_json.with_suffix(".txt").write_text(table_text + "\n")
    print(table_text)
    log(f"raw results: {out_json}")
    return 0


# ------------------------------------------------------------------ report


def num(v, fmt="{:,.0f}", none="-"):
    return none if v is None else fmt.format(v)


def mib(kib):
    return None if kib is None else kib / 1024


def dig(d, *path):
    """d[path[0]][path[1]]..., or None where a level is missing."""
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ratio(a, b):
    return "-" if a is None or b is None or not b else f"{a / b:.2f}x"


def table(hdr, rows):
    """Lines of a text table: first column left-aligned, the others right-aligned."""
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)] if rows else [len(h) for h in hdr]
    fmt = lambda r: "  ".join(str(x).rjust(w[i]) if i else str(x).ljust(w[i]) for i, x in enumerate(r))
    return [fmt(hdr), fmt(["-" * x for x in w])] + [fmt(r) for r in rows]


def head_lines(m):
    """The lines under a table's title: which proxyd (META m's proxyd_git, installed from the
    work tree) and the command line."""
    g = m.get("proxyd_git") or {}
    out = []
    if g.get("commit"):
        out.append(f"proxyd {g['commit'][:12]} \"{g.get('subject')}\" {g.get('date')}; installed from the work "
                   f"tree: outside bench/ {g.get('dirty_files_outside_bench')} modified, "
                   f"{g.get('untracked_files_outside_bench')} untracked files")
    out.append(f"command: {m['command']}")
    return out


def invalid_runs(label, what, v, error="error"):
    """['  ! LABEL WHAT: N invalid run(s): ERROR of the first'] if the measurement V (its
    valid_runs and runs) had invalid runs, else []."""
    if v and v["valid_runs"] < len(v["runs"]):
        bad = [x.get(error) for x in v["runs"] if not x.get("valid")]
        return [f"  ! {label} {what}: {len(bad)} invalid run(s): {bad[0]}"]
    return []


def saturation(P, names, keys):
    """'LABEL KEY RATE' for each measurement of KEYS of the proxies NAMES of P: the rate at which
    the client's core would be saturated, from the share of it the client used at the measured rate."""
    out = []
    for n in names:
        for k in keys:
            rate, share = dig(P[n], k, "median"), dig(P[n], k, "client_core_share")
            if rate and share:
                out.append(f"{P[n]['label']} {k} {num(rate / share)}")
    return out


def target_lines(issue, targets, checks):
    """proxyd's targets from ISSUE (TARGETS, their text), then CHECKS (check_targets' lines)."""
    return (["", f"proxyd targets ({issue}): " + targets,
             "  (lines marked (CPU) compare the proxies' own CPU time per operation: the same target, "
             "less disturbed by other work on the shared cores)"]
            + ["  " + t for t in checks])


def machine_lines(results, names, keys):
    """Other work on the machine: the proxies that used CPU while idle, and the load average at
    the start and during the runs of KEYS of the proxies NAMES."""
    m, P = results["meta"], results["proxies"]
    out = []
    busy = [f"{phase}: {n} {v:.2f}" for phase, d in (results.get("idle_cpu_share") or {}).items()
            for n, v in d.items() if v > 0.05]
    if busy:
        out.append("  ! CPU used by proxies nobody was talking to (core share over 1 s): " + ", ".join(busy))
    loads = [x["loadavg"] for n in names for k in keys
             for x in (dig(P[n], k, "runs") or []) if x.get("loadavg") is not None]
    out.append(f"1-min load average at start {m['host']['loadavg_at_start'][0]:.2f}"
               + (f", during the runs {min(loads):.2f}-{max(loads):.2f} (median {statistics.median(loads):.2f})"
                  if loads else "")
               + f" on {m['host']['cpus']} cores: what is over ~1 is other work on the machine, competing with "
               "the proxy and the client for their cores")
    return out


class Verdicts(list):
    """The lines of check_targets: called with (name, ok, detail), adds 'met ', 'MISS' or, where
    ok is None (not measured), UNKNOWN, then the name and detail."""

    def __init__(self, unknown="-   "):
        super().__init__()
        self.unknown = unknown

    def __call__(self, name, ok, detail):
        self.append(f"{self.unknown if ok is None else ('met ' if ok else 'MISS')}  {name}: {detail}")


def at_least(x, y, k=1.0):
    """x >= k * y, or None if either is missing."""
    return None if x is None or y is None else x >= k * y
