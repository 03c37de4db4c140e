"""
Harness for the integration tests: the real C{twistd -n proxyd}, installed
with pip into a fresh virtualenv once per session, against origins the tests
start on 127.0.0.1 / ::1.

Set C{PROXYD_TEST_VENV=/path/to/venv} to reuse a venv that already has
proxyd installed (skips the copy-and-install step while iterating).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.origin import (
    GarbageServer,
    HTTPOrigin,
    TLSOrigin,
    TunnelTarget,
    freePort,
    makeCertificates,
)
from tests.polling import waitFor  # also imported from here by tests

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

_liveDaemons = []


def _ipv6Available():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _ipv6Available()
needsIPv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")


# ---------------------------------------------------------------------------
# Install into a fresh venv


def _treeFiles(root):
    """Tracked files plus untracked files git does not ignore."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _copyTree(root, dest):
    files = _treeFiles(root)
    if files is None:
        shutil.copytree(root, dest, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist",
            ".venv*", ".pytest_cache", ".hypothesis", "dropin.cache"))
        return
    for rel in files:
        src = root / rel
        if not src.is_file():
            continue  # deleted in the work tree, or a submodule
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="session")
def venv(tmp_path_factory):
    """A virtualenv with proxyd pip-installed from a copy of this tree."""
    existing = os.environ.get("PROXYD_TEST_VENV")
    if existing:
        path = Path(existing)
        if not (path / "bin" / "twistd").exists():
            pytest.fail("PROXYD_TEST_VENV=%s has no bin/twistd" % (existing,))
        return path
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    _copyTree(REPO, src)
    env = _cleanEnv()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    path = base / "venv"
    steps = [
        [sys.executable, "-m", "venv", str(path)],
        [str(path / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
    ]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, cwd=str(base), env=env, capture_output=True,
                               text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("timed out: %s" % (" ".join(cmd),))
        if r.returncode != 0:
            pytest.fail("failed (%d): %s\n%s\n%s" % (
                r.returncode, " ".join(cmd), r.stdout[-5000:], r.stderr[-5000:]))
    return path


@pytest.fixture(scope="session")
def twistd(venv):
    return str(venv / "bin" / "twistd")


def _cleanEnv():
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE",
              # a suite run under systemd must not have its daemons notify it
              "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(k, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------------------
# The daemon


def tcpListener(port=None, host="127.0.0.1"):
    """(endpoint string, probe address) for a TCP listener."""
    port = port or freePort(host)
    if ":" in host:
        return "tcp6:%d:interface=%s" % (port, host.replace(":", "\\:")), (host, port)
    return "tcp:%d:interface=%s" % (port, host), (host, port)


def unixListener(path):
    return "unix:%s" % (path,), str(path)


def _probe(address, timeout=0.5):
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    s.settimeout(timeout)
    try:
        s.connect(address)
        return True
    except OSError:
        return False
    finally:
        s.close()


class DaemonFailed(Exception):
    pass


class Daemon:
    """
    One C{twistd -n --pidfile= proxyd ...} process run from C{/}.

    C{listeners} is a list of (endpoint string, probe address) pairs; the
    first TCP one gives C{.port}/C{.url}.  C{listeners=None} passes no
    C{--listen} at all (the caller gives it, e.g. in a config file, and
    must then give C{probes}).
    """

    def __init__(self, twistd, workdir, args=(), listeners=(), probes=None, env=None):
        self.twistd = twistd
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = [str(a) for a in args]
        self.listeners = list(listeners or [])
        self.probes = probes if probes is not None else [p for (_, p) in self.listeners]
        self.env = env
        self.proc = None
        self.stdoutPath = self.workdir / "stdout.log"
        self.stderrPath = self.workdir / "stderr.log"

    @property
    def argv(self):
        argv = [self.twistd, "-n", "--pidfile=", "proxyd"]
        for desc, _ in self.listeners:
            argv += ["--listen", desc]
        return argv + self.args

    def start(self):
        env = _cleanEnv()
        env.setdefault("PROXYD_HOME", str(self.workdir / "home"))
        if self.env:
            env.update(self.env)
        self._out = open(self.stdoutPath, "wb")
        self._err = open(self.stderrPath, "wb")
        self.proc = subprocess.Popen(
            self.argv, cwd="/", env=env, stdin=subprocess.DEVNULL,
            stdout=self._out, stderr=self._err, start_new_session=True)
        _liveDaemons.append(self)
        self.waitReady()
        return self

    def waitReady(self, timeout=READY_TIMEOUT):
        """Wait until every probe address accepts, in order, within C{timeout} in all."""
        pending = list(self.probes)

        def listeningOrExited():
            if self.proc.poll() is not None:
                return "exited"
            while pending and _probe(pending[0]):
                pending.pop(0)
            return not pending

        try:
            waitFor(listeningOrExited, timeout, message="proxyd to listen on %s" % (pending,))
        except AssertionError:
            self.stop()
            raise DaemonFailed("proxyd not listening on %s after %.0fs\nargv: %s\n%s" % (
                pending, timeout, self.argv, self.logText())) from None
        if pending:
            raise DaemonFailed("proxyd exited with %s before listening\nargv: %s\n%s" % (
                self.proc.returncode, self.argv, self.logText()))

    @property
    def pid(self):
        return self.proc.pid

    @property
    def address(self):
        for _, probe in self.listeners:
            if isinstance(probe, tuple):
                return probe
        return self.probes[0]

    @property
    def port(self):
        return self.address[1]

    @property
    def url(self):
        host, port = self.address
        return "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)

    @property
    def proxies(self):
        """For requests: both schemes through this proxy."""
        return {"http": self.url, "https": self.url}

    def logText(self):
        out = []
        for p in (self.stdoutPath, self.stderrPath):
            try:
                out.append(p.read_text("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(out)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def openFds(self):
        return len(os.listdir("/proc/%d/fd" % (self.pid,)))

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to C{timeout}, then SIGKILL.  Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for f in (self._out, self._err):
            f.close()
        if self in _liveDaemons:
            _liveDaemons.remove(self)
        return self.proc.returncode


class DaemonFactory:
    """Starts daemons in fresh work dirs; stops them all at teardown."""

    def __init__(self, twistd, base):
        self.twistd = twistd
        self.base = Path(base)
        self.daemons = []

    def __call__(self, *args, listeners=None, probes=None, env=None, noListen=False):
        for attempt in range(3):
            ls = [] if noListen else (listeners or [tcpListener()])
            workdir = Path(tempfile.mkdtemp(prefix="proxyd-", dir=self.base))
            d = Daemon(self.twistd, workdir, args, ls, probes, env)
            self.daemons.append(d)
            try:
                return d.start()
            except DaemonFailed as e:
                # A free port taken in the meantime: try new ports.
                if listeners is None and not noListen and "in use" in str(e) and attempt < 2:
                    continue
                raise
        raise AssertionError("unreachable")

    def stopAll(self):
        for d in self.daemons:
            d.stop()


@pytest.fixture
def proxyd(twistd, tmp_path):
    """proxyd(*args, listeners=None, ...) -> a started Daemon, stopped at teardown."""
    f = DaemonFactory(twistd, tmp_path)
    yield f
    f.stopAll()


@pytest.fixture(scope="module")
def moduleProxyd(twistd, tmp_path_factory):
    """As L{proxyd}, for daemons shared by a module."""
    f = DaemonFactory(twistd, tmp_path_factory.mktemp("daemons"))
    yield f
    f.stopAll()


class TwistdResult:
    def __init__(self, returncode, stdout, stderr, timedOut):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timedOut = timedOut

    @property
    def stderrLines(self):
        return [l for l in self.stderr.splitlines() if l.strip()]

    def __repr__(self):
        return "<twistd exit %r timedOut=%r\n--- stderr:\n%s\n--- stdout:\n%s>" % (
            self.returncode, self.timedOut, self.stderr[-3000:], self.stdout[-3000:])


@pytest.fixture
def runTwistd(twistd, tmp_path):
    """
    runTwistd(argv, timeout=10) runs C{twistd ARGV} from C{/} expecting it to
    exit (a start-up failure, or --help).  A process still running after
    C{timeout} (or whose C{probe} address starts accepting) is killed and
    reported with C{timedOut=True}.
    """

    def run(argv, timeout=10.0, probe=None):
        out = tmp_path / ("run-%d.out" % time.monotonic_ns())
        err = tmp_path / ("run-%d.err" % time.monotonic_ns())
        env = _cleanEnv()
        env.setdefault("PROXYD_HOME", str(tmp_path / "home"))
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([twistd] + [str(a) for a in argv], cwd="/", env=env,
                                    stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True)

            def exitedOrListening():
                if proc.poll() is not None:
                    return "exited"
                return _probe(probe) and "listening"

            try:
                if probe is None:
                    proc.wait(timeout)
                    timedOut = False
                else:
                    # Listening means it started after all: stopped like a timeout.
                    timedOut = waitFor(exitedOrListening, timeout,
                                       message="twistd to exit") == "listening"
            except (subprocess.TimeoutExpired, AssertionError):  # still running at the deadline
                timedOut = True
            if timedOut:
                proc.kill()
                proc.wait(10)
        return TwistdResult(proc.returncode, out.read_text("utf-8", "replace"),
                            err.read_text("utf-8", "replace"), timedOut)

    return run


# ---------------------------------------------------------------------------
# Origins


def _serverFixture(start, host, scope="session", doc=None):
    """
    A fixture that yields C{start(host)} (a server from
    L{tests.integration.origin}) and closes it at teardown; for C{::1} it
    skips without IPv6.
    """

    def serve():
        if ":" in host and not IPV6:
            pytest.skip("no IPv6 loopback")
        server = start(host)
        yield server
        server.close()

    serve.__doc__ = doc
    return pytest.fixture(scope=scope)(serve)


origin = _serverFixture(HTTPOrigin.start, "127.0.0.1")
origin6 = _serverFixture(HTTPOrigin.start, "::1")
countingOrigin = _serverFixture(
    HTTPOrigin.start, "127.0.0.1", scope="function",
    doc="A fresh origin per test, so its connection count is the test's own.")
tunnelTarget = _serverFixture(TunnelTarget.start, "127.0.0.1")
tunnelTarget6 = _serverFixture(TunnelTarget.start, "::1")
garbageServer = _serverFixture(GarbageServer.start, "127.0.0.1")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return makeCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tlsOrigin(certs):
    s = TLSOrigin.start(certs)
    yield s
    s.close()


def requireCommand(name):
    """The path of command C{name}; skips the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip("%s is not installed" % (name,))
    return path


@pytest.fixture(scope="session")
def curl():
    return requireCommand("curl")


def runCurl(curl, args, timeout=60):
    """Run curl; returns CompletedProcess with bytes stdout/stderr."""
    return subprocess.run([curl, "-sS", "--max-time", str(int(timeout))] + list(args),
                          capture_output=True, timeout=timeout + 10)


# ---------------------------------------------------------------------------
# Attach daemon output to failing tests


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _liveDaemons:
        for d in list(_liveDaemons):
            text = d.logText()
            report.sections.append(
                ("proxyd %s" % (" ".join(d.argv[4:]),), text[-6000:]))
