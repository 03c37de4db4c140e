"""
twistd's own options (issue 7): C{--pidfile} is written and removed, and
C{--uid}/C{--gid} bind the port as root and then run as an unprivileged
user, with the CA, the access log (and its rotation) and a plugin's file
still usable, or start-up saying in one line why not.

The tests that switch users run as root and skip otherwise.  The daemon is
C{twistd -n [twistd options] proxyd ...}; each one is told to notify an
abstract unix socket (C{NOTIFY_SOCKET=@...}: no file the run user would
need access to), so a test knows when start-up, privilege drop included,
is over (C{READY=1}) and when a SIGHUP has been handled (C{RELOADING=1}
then C{READY=1}).
"""

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Daemon, DaemonFailed, _cleanEnv, runCurl, tcpListener
from tests.integration.origin import HELLO
from tests.polling import waitFor

# ---------------------------------------------------------------------------
# Helpers


class Notifications:
    """An abstract unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self):
        self.name = "proxyd-test-%s" % (uuid.uuid4().hex,)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name)
        self.socket.setblocking(False)
        self.seen = []  # one list of KEY=VALUE lines per datagram

    @property
    def address(self):
        return "@" + self.name

    def _drain(self):
        while True:
            try:
                self.seen.append(self.socket.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return

    def count(self, line):
        self._drain()
        return sum(line in message for message in self.seen)

    def waitCount(self, line, n, timeout=15):
        waitFor(lambda: self.count(line) >= n, timeout, message="%s #%d from proxyd" % (line, n))

    def close(self):
        self.socket.close()


class TwistdDaemon(Daemon):
    """A L{Daemon} with twistd options of the test's own before C{proxyd}."""

    def __init__(self, command, twistdArgs, *args, **kw):
        Daemon.__init__(self, command[-1], *args, **kw)
        self.command = list(command)
        self.twistdArgs = [str(a) for a in twistdArgs]

    @property
    def argv(self):
        argv = self.command + ["-n"] + self.twistdArgs
        if not any(a.startswith("--pidfile") for a in self.twistdArgs):
            argv.append("--pidfile=")  # never a twistd.pid in /
        argv.append("proxyd")
        for desc, _ in self.listeners:
            argv += ["--listen", desc]
        return argv + self.args


class Starter:
    """
    C{start(twistdArgs, *proxydArgs, listeners=None)} -> a started
    L{TwistdDaemon} that notifies C{.notes}; all are stopped at teardown.
    """

    def __init__(self, command, base):
        self.command = command
        self.base = Path(base)
        self.daemons = []
        self.notes = []

    def __call__(self, twistdArgs, *args, listeners=None):
        notes = Notifications()
        self.notes.append(notes)
        workdir = Path(tempfile.mkdtemp(prefix="proxyd-", dir=self.base))
        d = TwistdDaemon(self.command, twistdArgs, workdir, args, listeners or [tcpListener()],
                         env={"NOTIFY_SOCKET": notes.address})
        d.notes = notes
        self.daemons.append(d)
        d.start()
        notes.waitCount("READY=1", 1)
        return d

    def stopAll(self):
        for d in self.daemons:
            d.stop()
        for notes in self.notes:
            notes.close()


@pytest.fixture
def start(twistd, tmp_path):
    starter = Starter([twistd], tmp_path)
    yield starter
    starter.stopAll()


class RunUser:
    def __init__(self, uid, gid, name, group):
        self.uid, self.gid, self.name, self.group = uid, gid, name, group

    @property
    def twistdArgs(self):
        return ["--uid", str(self.uid), "--gid", str(self.gid)]

    def chown(self, path):
        os.chown(path, self.uid, self.gid)


@pytest.fixture(scope="session")
def nobody():
    """The user the daemon drops to: Debian's nobody/nogroup.  Root only."""
    if os.geteuid() != 0:
        pytest.skip("--uid/--gid need root: running as uid %d" % (os.geteuid(),))
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this machine")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = user.pw_gid
    return RunUser(user.pw_uid, gid, user.pw_name, grp.getgrgid(gid).gr_name)


def _runsAs(user, argv):
    """The stdout of C{argv} run as C{user} from C{/}, or None if it failed."""
    try:
        r = subprocess.run([str(a) for a in argv], cwd="/", user=user.uid, group=user.gid,
                           extra_groups=[], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _importsProxyd(user, python):
    imports = "import proxyd.privileges, twisted.scripts.twistd, OpenSSL.SSL"
    return _runsAs(user, [python, "-c", imports]) is not None


def _interpreters(venv):
    """Pythons of the venv's version: its base interpreter, then the usual system ones."""
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines()
               if " = " in line)
    version = ".".join(cfg["version"].split(".")[:2])
    home = Path(cfg["home"])
    candidates = [home / ("python" + version), home / "python3",
                  Path("/usr/bin/python" + version), Path("/usr/local/bin/python" + version)]
    return version, [c for c in dict.fromkeys(candidates) if c.exists()]


@pytest.fixture(scope="session")
def dropTwistd(venv, nobody):
    """
    The twistd command for daemons that drop to C{nobody}.  Modules are
    still imported after the drop, so the interpreter and the installed
    packages must be readable by it.  The session's venv lives in pytest's
    private (0700) directory, and its interpreter may be under /root (pyenv):
    then a venv made with an interpreter of the same version that nobody
    can run gets a copy of the session venv's packages, in a world-readable
    directory.
    """
    if _importsProxyd(nobody, venv / "bin" / "python"):
        yield [str(venv / "bin" / "twistd")]
        return
    version, interpreters = _interpreters(venv)
    base = Path(tempfile.mkdtemp(prefix="proxyd-privileges-venv-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for number, python in enumerate(interpreters):
            if (_runsAs(nobody, [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
                    or "").strip() != version:
                continue
            copy = base / ("venv%d" % (number,))
            made = subprocess.run([str(python), "-m", "venv", "--without-pip", str(copy)],
                                  capture_output=True, timeout=120)
            if made.returncode != 0:
                continue
            site = Path("lib") / ("python" + version) / "site-packages"
            shutil.copytree(venv / site, copy / site, symlinks=True, dirs_exist_ok=True)
            shutil.copy2(venv / "bin" / "twistd", copy / "bin" / "twistd")
            if _importsProxyd(nobody, copy / "bin" / "python"):
                # bin/twistd's #! names the session venv: run it with this python.
                yield [str(copy / "bin" / "python"), str(copy / "bin" / "twistd")]
                return
        pytest.skip("%s can run no Python %s with proxyd installed (tried %s)" % (
            nobody.name, version, ", ".join(map(str, [venv / "bin" / "python"] + interpreters))))
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def startAsNobody(dropTwistd, tmp_path):
    starter = Starter(dropTwistd, tmp_path)
    yield starter
    starter.stopAll()


@pytest.fixture
def scratch():
    """A directory everyone may traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="proxyd-privileges-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def statusIds(pid):
    """(real, effective, saved, fs) uids, the same gids, and supplementary groups of C{pid}."""
    fields = {}
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = [int(v) for v in value.split()] if key in ("Uid", "Gid", "Groups") else None
    return fields["Uid"], fields["Gid"], fields["Groups"]


def assertRunsAs(d, user):
    uids, gids, groups = statusIds(d.pid)
    assert uids == [user.uid] * 4, uids
    assert gids == [user.gid] * 4, gids
    assert 0 not in groups, groups


def logLines(d, marker):
    return [line for line in d.logText().splitlines() if marker in line]


def sighup(d, n):
    """Send SIGHUP; return once proxyd has handled it (its C{n}th reload)."""
    d.proc.send_signal(signal.SIGHUP)
    d.notes.waitCount("RELOADING=1", n)
    d.notes.waitCount("READY=1", n + 1)


def fetch(curl, d, origin, path):
    r = runCurl(curl, ["-x", d.url, origin.url(path)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    return r


def lines(path):
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------
# --pidfile


def test_pidfileWrittenThenRemoved(start, tmp_path):
    """twistd --pidfile PATH holds the daemon's pid while it runs and is gone after SIGTERM."""
    pidfile = tmp_path / "proxyd.pid"
    d = start(["--pidfile", pidfile])
    assert pidfile.read_text().strip() == str(d.pid)
    assert d.stop() == 0, d.logText()
    assert not pidfile.exists()


def test_pidfileWrittenThenRemovedUnderUid(startAsNobody, nobody, scratch):
    """
    With --uid, the pid file is written as root and removed as the run
    user: in a directory that user may write (systemd's RuntimeDirectory=,
    /run/proxyd), it is gone after SIGTERM too.
    """
    run = scratch / "run"
    run.mkdir()
    nobody.chown(run)
    pidfile = run / "proxyd.pid"
    d = startAsNobody(nobody.twistdArgs + ["--pidfile", pidfile])
    assert pidfile.read_text().strip() == str(d.pid)
    assertRunsAs(d, nobody)
    assert d.stop() == 0, d.logText()
    assert not pidfile.exists()


# ---------------------------------------------------------------------------
# --uid/--gid: the port is bound before the drop


def _requirePort80Free():
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted binds
        s.bind(("127.0.0.1", 80))
    except OSError as e:
        pytest.skip("127.0.0.1:80 is not free: %s" % (e.strerror or e,))
    finally:
        s.close()


def test_port80BoundAsRootThenRunsAsNobody(startAsNobody, nobody, origin, curl):
    """
    twistd -n --uid nobody --gid nogroup proxyd --listen tcp:80:...: port
    80 is bound (root only), then the process runs as nobody (real,
    effective, saved and file-system ids, no root group) and proxies.
    """
    _requirePort80Free()
    try:
        d = startAsNobody(nobody.twistdArgs,
                          listeners=[("tcp:80:interface=127.0.0.1", ("127.0.0.1", 80))])
    except DaemonFailed as e:
        if "in use" in str(e):
            pytest.skip("127.0.0.1:80 was taken meanwhile")
        raise
    assert logLines(d, "starting on 80"), d.logText()
    assertRunsAs(d, nobody)
    fetch(curl, d, origin, "/hello?through-port-80")
    assert "/hello?through-port-80" in origin.paths()
    assert not logLines(d, "Traceback"), d.logText()
    assert d.stop() == 0, d.logText()


# ---------------------------------------------------------------------------
# mitm: the CA made by root before the drop


def test_mitmCAMadeByRootStillSignsAfterDrop(startAsNobody, nobody, scratch, tlsOrigin, certs, curl):
    """
    A fresh --ca-dir is created as root (directory 0700, key 0600, both
    root's); after the drop, intercepted HTTPS still works, for a host seen
    before the drop and after, and /ca.pem is still served.
    """
    caDir = scratch / "ca"
    upstreamCA = scratch / "upstream-ca.pem"  # readable by nobody: no SIGHUP warning
    shutil.copy(certs["ca"], upstreamCA)
    upstreamCA.chmod(0o644)
    d = startAsNobody(nobody.twistdArgs, "--mode", "mitm", "--connect-ports", "*",
                      "--ca-dir", caDir, "--upstream-ca", upstreamCA)
    assertRunsAs(d, nobody)
    key = os.stat(caDir / "ca.key")
    assert (key.st_uid, key.st_mode & 0o777) == (0, 0o600)
    assert os.stat(caDir).st_mode & 0o777 == 0o700
    for host in ("localhost", "127.0.0.1"):  # two leaves, both made after the drop
        r = runCurl(curl, ["-x", d.url, "--cacert", caDir / "ca.pem",
                           "https://%s:%d/hello" % (host, tlsOrigin.port)])
        assert r.returncode == 0, r.stderr
        assert r.stdout == HELLO
    r = runCurl(curl, [d.url + "/ca.pem"])
    assert r.returncode == 0 and r.stdout == (caDir / "ca.pem").read_bytes(), r
    assert not logLines(d, "proxyd.privileges#warn"), d.logText()
    assert d.stop() == 0, d.logText()


# ---------------------------------------------------------------------------
# --access-log under --uid, and its rotation


def test_accessLogRotatedInDirectoryOfRunUser(startAsNobody, nobody, scratch, origin, curl):
    """
    The access log in a directory of the run user's (systemd's
    LogsDirectory=, etc/logrotate.d/proxyd): lines are written after the
    drop; a SIGHUP with nothing rotated changes nothing and logs no error;
    after mv access.log access.log.1 and SIGHUP, new lines go to a new
    access.log, made by the run user, and none is lost.
    """
    logs = scratch / "logs"
    logs.mkdir(mode=0o750)
    nobody.chown(logs)
    access = logs / "access.log"
    d = startAsNobody(nobody.twistdArgs, "--access-log", access)
    assert not logLines(d, "proxyd.privileges#warn"), d.logText()
    fetch(curl, d, origin, "/hello?one")
    waitFor(lambda: len(lines(access)) == 1, 10, message="the first access line")

    sighup(d, 1)  # nothing rotated: the same file goes on
    fetch(curl, d, origin, "/hello?two")
    waitFor(lambda: len(lines(access)) == 2, 10, message="the second access line")

    access.rename(logs / "access.log.1")
    sighup(d, 2)
    fetch(curl, d, origin, "/hello?three")
    waitFor(lambda: len(lines(access)) == 1, 10, message="a line in the new access.log")
    assert "/hello?three" in lines(access)[0]
    assert os.stat(access).st_uid == nobody.uid
    old = lines(logs / "access.log.1")
    assert ["/hello?one" in old[0], "/hello?two" in old[1], len(old)] == [True, True, 2], old
    assert not logLines(d, "Cannot reopen"), d.logText()
    assert d.stop() == 0, d.logText()


def test_accessLogInRootDirectory(startAsNobody, nobody, scratch, origin, curl):
    """
    The access log in a directory only root may write: start-up warns in
    one line (the log itself works, it was opened before the drop); after
    mv + SIGHUP the reopen fails with one line and lines go on to the moved
    file, none lost; once the file is re-created for the run user (what
    logrotate's "create 0640 USER GROUP" does), SIGHUP reopens it.
    """
    logs = scratch / "logs"
    logs.mkdir(mode=0o755)
    access = logs / "access.log"
    rotated = logs / "access.log.1"
    d = startAsNobody(nobody.twistdArgs, "--access-log", access)
    warnings = logLines(d, "proxyd.privileges#warn")
    assert len(warnings) == 1, d.logText()
    assert "--access-log %s: %s (uid %d) cannot create files in %s" % (
        access, nobody.name, nobody.uid, logs) in warnings[0]
    assert "create 0640 %s" % (nobody.name,) in warnings[0]
    fetch(curl, d, origin, "/hello?one")
    waitFor(lambda: len(lines(access)) == 1, 10, message="the first access line")

    sighup(d, 1)  # nothing rotated: no error, though nobody could not open root's file anew
    assert not logLines(d, "Cannot reopen"), d.logText()

    access.rename(rotated)
    sighup(d, 2)
    errors = logLines(d, "Cannot reopen")
    assert len(errors) == 1, d.logText()
    assert "as %s (uid %d)" % (nobody.name, nobody.uid) in errors[0]
    assert "Permission denied" in errors[0]
    fetch(curl, d, origin, "/hello?two")
    waitFor(lambda: len(lines(rotated)) == 2, 10, message="the second line, in the moved file")
    assert not access.exists()

    access.touch()
    access.chmod(0o640)
    nobody.chown(access)  # logrotate: create 0640 nobody nogroup
    sighup(d, 3)
    fetch(curl, d, origin, "/hello?three")
    waitFor(lambda: len(lines(access)) == 1, 10, message="a line in the re-created access.log")
    assert "/hello?three" in lines(access)[0]
    assert len(lines(rotated)) == 2
    assert len(logLines(d, "Cannot reopen")) == 1
    assert not logLines(d, "Traceback"), d.logText()
    assert d.running()
    assert d.stop() == 0, d.logText()


def test_sighupReloadsUnderUid(startAsNobody, nobody, scratch, origin, curl):
    """
    The set-up of etc/ (the access log in the run user's directory, the
    file made by root at start): SIGHUP reloads without an error line.
    """
    logs = scratch / "logs"
    logs.mkdir(mode=0o750)
    nobody.chown(logs)
    d = startAsNobody(nobody.twistdArgs, "--access-log", logs / "access.log")
    sighup(d, 1)
    fetch(curl, d, origin, "/hello?after-reload")
    errors = [line for line in d.logText().splitlines() if "#error]" in line or "#critical]" in line]
    assert errors == []
    assert d.stop() == 0, d.logText()


# ---------------------------------------------------------------------------
# A plugin's file: har


def test_harFileNotWritableByRunUserRefusedInOneLine(dropTwistd, nobody, scratch, tmp_path):
    """
    --plugin har:file=... in a directory only root may write: twistd binds
    the port, drops privileges, and proxyd refuses to start in one line
    naming the plugin, the file and the user, exit 1, no traceback (the
    file is opened only after the drop).
    """
    har = scratch / "har"
    har.mkdir(mode=0o755)
    listen, _ = tcpListener()
    env = _cleanEnv()
    env["PROXYD_HOME"] = str(tmp_path / "home")
    r = subprocess.run(dropTwistd + ["-n", "--pidfile="] + nobody.twistdArgs + [
        "proxyd", "--listen", listen, "--plugin", "har:file=%s" % (har / "flows.har",)],
        cwd="/", env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    stderr = [line for line in r.stderr.splitlines() if line.strip()]
    assert stderr == [
        "proxyd: --plugin har: cannot write %s as %s (uid %d): it cannot create files in %s"
        % (har / "flows.har", nobody.name, nobody.uid, har)
    ], r
    assert "Traceback" not in r.stdout + r.stderr, r
    assert not (har / "flows.har").exists()


def test_harFileInDirectoryOfRunUser(startAsNobody, nobody, scratch, origin, curl):
    """The har file in a directory of the run user's is made by it and records flows."""
    har = scratch / "har"
    har.mkdir(mode=0o755)
    nobody.chown(har)
    flows = har / "flows.har"
    d = startAsNobody(nobody.twistdArgs, "--plugin", "har:file=%s" % (flows,))
    assert os.stat(flows).st_uid == nobody.uid
    fetch(curl, d, origin, "/hello?recorded")

    def recorded():
        try:
            return json.loads(flows.read_text())["log"]["entries"]
        except ValueError:
            return None  # being written

    entries = waitFor(recorded, 10, message="the HAR entry")
    assert entries[0]["request"]["url"].endswith("/hello?recorded")
    assert d.stop() == 0, d.logText()
