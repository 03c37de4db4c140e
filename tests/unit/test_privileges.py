"""
Tests for L{proxyd.privileges}: what the run user cannot open after
twistd's --uid/--gid, said in one line at start; and for the access log's
reopen under a run user (L{proxyd.accesslog.AccessLog.reopen}).

File access is faked with an C{access(path, mode)} function: the tests
may well run as root, for whom L{os.access} says yes to everything.
"""

import io
import os
import pwd
import sys

import attr
from twisted.application.service import Service
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from proxyd.accesslog import AccessLog
from proxyd.config import ProxyConfig
from proxyd.pluginload import LoadedPlugin
from proxyd.privileges import checkAfterDrop, problems, runUser
from proxyd.service import ProxyService, StartupError

USER = "nobody (uid 65534)"


class FakeFiles:
    """
    C{access(path, mode)} for a made-up file system: C{files} maps a path to
    the modes (C{os.R_OK}, C{os.W_OK}, C{os.X_OK} or'ed) the run user has
    on it; a path not in it does not exist.
    """

    def __init__(self, files):
        self.files = dict(files)
        self.asked = []

    def __call__(self, path, mode):
        self.asked.append((path, mode))
        if path not in self.files:
            return False
        return mode == os.F_OK or (self.files[path] & mode) == mode


RWX = os.R_OK | os.W_OK | os.X_OK
RX = os.R_OK | os.X_OK


class FileService(Service):
    """A plugin rewriter that opens C{path} when it starts, as har's does."""

    def __init__(self, path):
        self.path = path
        self.started = False

    def startService(self):
        Service.startService(self)
        self.started = True


def plugin(rewriter, label="har"):
    return LoadedPlugin(label=label, name=label.split("#")[0], settings={}, rewriter=rewriter)


@attr.s
class FakePair:
    certPath = attr.ib()
    keyPath = attr.ib()


@attr.s
class FakeServerTLS:
    pairs = attr.ib()


class RunUserTests(SynchronousTestCase):
    def test_nameAndUid(self):
        """The run user is named with its uid."""
        self.assertEqual(
            runUser(lambda: 65534, lambda uid: pwd.struct_passwd(("nobody", "x", uid, uid, "", "/", "/bin/false"))),
            USER,
        )

    def test_unknownUid(self):
        """A uid with no passwd entry (--uid 12345) is named by number."""

        def getpwuid(uid):
            raise KeyError(uid)

        self.assertEqual(runUser(lambda: 12345, getpwuid), "uid 12345")


class AccessLogDirectoryTests(SynchronousTestCase):
    def test_directoryOfRunUser(self):
        """A directory the run user may create files in: nothing to say."""
        config = ProxyConfig(accessLog="/var/log/proxyd/access.log")
        files = FakeFiles({"/var/log/proxyd": RWX, "/var/log/proxyd/access.log": os.R_OK})
        self.assertEqual(problems(config, files, USER), ([], []))

    def test_directoryOfRoot(self):
        """
        A directory the run user cannot create files in: one warning that
        names the log, the user, the directory and what makes rotation work.
        """
        config = ProxyConfig(accessLog="/var/log/access.log")
        refusals, warnings = problems(config, FakeFiles({"/var/log": RX}), USER)
        self.assertEqual(refusals, [])
        self.assertEqual(len(warnings), 1)
        self.assertTrue(
            warnings[0].startswith(
                "--access-log /var/log/access.log: nobody (uid 65534) cannot create files in /var/log,"
            ),
            warnings[0],
        )
        self.assertIn("create 0640 nobody GROUP", warnings[0])
        self.assertIn("copytruncate", warnings[0])
        self.assertNotIn("\n", warnings[0])

    def test_relativePath(self):
        """A relative path is judged by the directory it is in."""
        config = ProxyConfig(accessLog="access.log")
        files = FakeFiles({os.getcwd(): RWX})
        self.assertEqual(problems(config, files, USER), ([], []))

    def test_stdout(self):
        """- (standard output) has no directory to look at."""
        files = FakeFiles({})
        self.assertEqual(problems(ProxyConfig(accessLog="-"), files, USER), ([], []))
        self.assertEqual(files.asked, [])


class PluginFileTests(SynchronousTestCase):
    def test_writableFile(self):
        """A plugin file the run user may write (existing or to be made) is fine."""
        config = ProxyConfig(plugins=(
            plugin(FileService("/srv/har/a.har")),
            plugin(FileService("/srv/har/b.har"), "har#2"),
        ))
        files = FakeFiles({"/srv/har": RWX, "/srv/har/a.har": os.R_OK | os.W_OK})
        self.assertEqual(problems(config, files, USER), ([], []))

    def test_directoryNotWritable(self):
        """A file to be made in a directory the run user cannot write: refused."""
        config = ProxyConfig(plugins=(plugin(FileService("/root/flows.har")),))
        refusals, warnings = problems(config, FakeFiles({"/root": RX}), USER)
        self.assertEqual(
            refusals,
            ["proxyd: --plugin har: cannot write /root/flows.har as nobody (uid 65534): "
             "it cannot create files in /root"],
        )
        self.assertEqual(warnings, [])

    def test_fileNotWritable(self):
        """A file there already that the run user cannot write (made by root): refused."""
        config = ProxyConfig(plugins=(plugin(FileService("/srv/flows.har"), "har#2"),))
        refusals, _ = problems(config, FakeFiles({"/srv": RWX, "/srv/flows.har": os.R_OK}), USER)
        self.assertEqual(
            refusals,
            ["proxyd: --plugin har#2: cannot write /srv/flows.har as nobody (uid 65534): "
             "/srv/flows.har is not writable by it"],
        )

    def test_directoryMissing(self):
        """A directory that is gone, or that the run user cannot reach: refused."""
        config = ProxyConfig(plugins=(plugin(FileService("/gone/flows.har")),))
        refusals, _ = problems(config, FakeFiles({}), USER)
        self.assertEqual(len(refusals), 1)
        self.assertIn("/gone does not exist or cannot be reached", refusals[0])

    def test_onlyServicesWithAPath(self):
        """Rewriters that are not services, or have no path, open nothing at start."""
        notAService = type("Rewriter", (), {"path": "/root/x"})()
        noPath = Service()
        config = ProxyConfig(plugins=(plugin(notAService, "a"), plugin(noPath, "b")))
        files = FakeFiles({})
        self.assertEqual(problems(config, files, USER), ([], []))
        self.assertEqual(files.asked, [])


class ReloadedFilesTests(SynchronousTestCase):
    def test_readable(self):
        """Files SIGHUP reads again that the run user can read: nothing to say."""
        config = ProxyConfig(
            configFile="/etc/proxyd/proxyd.toml",
            serverTLS=FakeServerTLS([FakePair("/etc/proxyd/site.pem", "/etc/proxyd/site.key")]),
            clientCA="/etc/proxyd/clients.pem",
            upstreamCA=("/etc/proxyd/upstream.pem",),
        )
        files = FakeFiles({p: os.R_OK for p in (
            "/etc/proxyd/proxyd.toml", "/etc/proxyd/site.pem", "/etc/proxyd/site.key",
            "/etc/proxyd/clients.pem", "/etc/proxyd/upstream.pem")})
        self.assertEqual(problems(config, files, USER), ([], []))

    def test_unreadable(self):
        """
        Files SIGHUP reads again that the run user cannot read (a key only
        root may read): one warning naming each once, not a refusal.
        """
        config = ProxyConfig(
            configFile="/etc/proxyd/proxyd.toml",
            serverTLS=FakeServerTLS([
                FakePair("/etc/ssl/site.pem", "/etc/ssl/private/site.key"),
                FakePair("/etc/ssl/site.pem", "/etc/ssl/private/other.key"),
            ]),
        )
        files = FakeFiles({"/etc/proxyd/proxyd.toml": os.R_OK, "/etc/ssl/site.pem": os.R_OK})
        refusals, warnings = problems(config, files, USER)
        self.assertEqual(refusals, [])
        self.assertEqual(
            warnings,
            ["SIGHUP cannot re-read /etc/ssl/private/site.key, /etc/ssl/private/other.key: "
             "nobody (uid 65534) cannot read them; a reload keeps the running configuration, "
             "a restart reads them as root"],
        )

    def test_oneUnreadable(self):
        """One file is 'it'."""
        config = ProxyConfig(configFile="/etc/proxyd/proxyd.toml")
        _, warnings = problems(config, FakeFiles({}), USER)
        self.assertEqual(len(warnings), 1)
        self.assertIn("cannot read it;", warnings[0])


class CheckAfterDropTests(SynchronousTestCase):
    def test_warningsLogged(self):
        """Each warning is one log event at warn level; start-up goes on."""
        events = []
        config = ProxyConfig(accessLog="/var/log/access.log", configFile="/etc/proxyd.toml")
        checkAfterDrop(config, FakeFiles({"/var/log": RX}), USER, log=Logger(observer=events.append))
        self.assertEqual(len(events), 2)
        self.assertEqual({e["log_level"].name for e in events}, {"warn"})
        self.assertIn("--access-log", events[0]["warning"])
        self.assertIn("SIGHUP cannot re-read /etc/proxyd.toml", events[1]["warning"])

    def test_refusal(self):
        """A refusal is one line on stderr and a StartupError (exit 1, no traceback)."""
        stderr = io.StringIO()
        config = ProxyConfig(plugins=(plugin(FileService("/a/x.har")), plugin(FileService("/b/y.har"), "har#2")))
        with self.assertRaises(StartupError) as e:
            checkAfterDrop(config, FakeFiles({}), USER, log=Logger(observer=lambda e: None), stderr=stderr)
        self.assertEqual(e.exception.code, 1)
        line = "proxyd: --plugin har: cannot write /a/x.har as nobody (uid 65534): /a does not exist or cannot be reached"
        self.assertEqual(str(e.exception), line)
        self.assertEqual(stderr.getvalue(), line + "\n")

    def test_nothingToSay(self):
        """The defaults open nothing after the drop: no event at all."""
        events = []
        checkAfterDrop(ProxyConfig(), FakeFiles({}), USER, log=Logger(observer=events.append))
        self.assertEqual(events, [])


class ServiceTests(SynchronousTestCase):
    """ProxyService.startService checks before the plugins' services start."""

    def _service(self, rewriter):
        from proxyd.factory import ProxyFactory

        reactor = MemoryReactorClock()
        config = ProxyConfig(listen=(), plugins=(plugin(rewriter),))
        return ProxyService(config, ProxyFactory(config, reactor), reactor,
                            endpointFactory=lambda reactor, description: None)

    def test_refusedBeforePluginStarts(self):
        """A plugin file the run user cannot write stops start-up before the plugin opens it."""
        rewriter = FileService(os.path.join(self.mktemp(), "missing-directory", "flows.har"))
        service = self._service(rewriter)
        self.patch(sys, "__stderr__", io.StringIO())
        self.assertRaises(StartupError, service.startService)
        self.assertFalse(rewriter.started)

    def test_startsPlugin(self):
        """A plugin file that can be written: the plugin's service starts."""
        directory = self.mktemp()
        os.mkdir(directory)
        rewriter = FileService(os.path.join(directory, "flows.har"))
        service = self._service(rewriter)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(rewriter.started)


class AccessLogReopenTests(SynchronousTestCase):
    """SIGHUP's reopen, as a run user that may not be able to open the path anew."""

    def test_sameFileNotReopened(self):
        """Nothing rotated: the open file stays, nothing is opened again."""
        path = self.mktemp()
        log = AccessLog.open(path)
        self.addCleanup(log.close)
        stream = log._stream
        log.reopen()
        self.assertIs(log._stream, stream)
        self.assertFalse(stream.closed)

    def test_replacedFileReopened(self):
        """A new file at the path (logrotate's create) is opened, the old one closed."""
        path = self.mktemp()
        log = AccessLog.open(path)
        self.addCleanup(log.close)
        old = log._stream
        os.rename(path, path + ".1")
        open(path, "w").close()
        log.reopen()
        self.assertIsNot(log._stream, old)
        self.assertTrue(old.closed)

    def test_streamWithoutFile(self):
        """A stream with no file descriptor (a test's) is always reopened."""
        path = self.mktemp()
        log = AccessLog(io.StringIO(), path=path)
        self.addCleanup(log.close)
        log.reopen()
        self.assertEqual(log._stream.name, path)

    def test_failureSaysWhoAndKeepsOldFile(self):
        """A failed reopen is one error naming the run user; lines go on to the old file."""
        path = self.mktemp()
        log = AccessLog.open(path)
        self.addCleanup(log.close)
        os.rename(path, path + ".1")
        os.mkdir(path)  # cannot be opened as a file, even by root
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log.reopen()
        log.write({"client": "127.0.0.1"})
        self.assertEqual(len(observer), 1)
        self.assertEqual(observer[0]["user"], runUser())
        self.assertIn("Cannot reopen", observer[0]["log_format"])
        self.assertIn("lines go on to the file it had open", observer[0]["log_format"])
        with open(path + ".1") as f:
            self.assertEqual(len(f.read().splitlines()), 1)
