"""
Tests for L{proxyd.tap} and L{proxyd.service}: options, start-up errors in
one line, and the service tree.
"""

import io
import os
import signal
import socket
import subprocess
import sys

from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from proxyd import tap
from proxyd.config import ProxyConfig
from proxyd.service import ListenerService, ProxyService, StartupError
from tests.polling import waitFor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(*argv):
    options = tap.Options(reactor=MemoryReactor())
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        """No options: the SPEC defaults."""
        options = _parse()
        self.assertEqual(options["proxyConfig"], ProxyConfig())
        self.assertEqual(options["listen"], [])

    def test_repeatable(self):
        """--listen and --allow collect every value in order."""
        options = _parse(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--listen=unix:/tmp/p.sock",
            "--allow", "10.0.0.0/8", "--allow", "::1",
        )
        self.assertEqual(options["listen"], ["tcp:0:interface=127.0.0.1", "unix:/tmp/p.sock"])
        config = options["proxyConfig"]
        self.assertEqual(config.listen, ("tcp:0:interface=127.0.0.1", "unix:/tmp/p.sock"))
        self.assertEqual([str(n) for n in config.allow], ["10.0.0.0/8", "::1/128"])

    def test_everyOption(self):
        """Every option of this version is accepted on the command line."""
        log = self.mktemp()
        config = _parse(
            "--mode=forward", "--proxy-auth=u:p", "--connect-ports=*",
            "--allow-private", "--access-log", log, "--log-format=json",
            "--connect-timeout=1", "--idle-timeout=2", "--header-timeout=3",
            "--max-connections=4", "--max-header-size=4096",
        )["proxyConfig"]
        self.assertEqual(
            (config.connectTimeout, config.idleTimeout, config.headerTimeout), (1.0, 2.0, 3.0)
        )
        self.assertEqual((config.maxConnections, config.maxHeaderSize), (4, 4096))
        self.assertTrue(config.addressPolicy.allowLinkLocal)
        self.assertIn(1, config.connectPorts)
        self.assertEqual((config.accessLog, config.logFormat), (log, "json"))

    def test_configFile(self):
        """--config is read, and the command line wins over it."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('connect-ports = "8443"\nidle-timeout = 9\n')
        config = _parse("--config", path, "--connect-ports", "443")["proxyConfig"]
        self.assertEqual(str(config.connectPorts), "443")
        self.assertEqual(config.idleTimeout, 9.0)

    def test_badValueIsOneLineSystemExit(self):
        """A bad value is a SystemExit with one line naming the option: no
        UsageError (which would print the whole usage)."""
        cases = [
            (["--mode=bad"], "proxyd: --mode: expected forward, mitm or reverse, got 'bad'"),
            (["--mode=reverse"],
             "proxyd: --tls-cert: reverse mode needs --tls-cert FILE --tls-key FILE (the site's certificate)"),
            (["--listen", "tcp:x"], "proxyd: --listen tcp:x: 'x' is not a port number"),
            (["--allow", "1.2.3.4/40"],
             "proxyd: --allow: '1.2.3.4/40' is not an IP address or network (CIDR)"),
            (["--connect-ports", "0"], "proxyd: --connect-ports: port 0 is out of range 1-65535"),
            (["--connect-timeout", "0"],
             "proxyd: --connect-timeout: must be a number of seconds above 0, got '0'"),
            (["--max-connections", "x"],
             "proxyd: --max-connections: expected a whole number, got 'x'"),
            (["--allow-private", "--deny-private"],
             "proxyd: --allow-private: cannot be combined with --deny-private"),
            (["--proxy-auth", "x"], "proxyd: --proxy-auth: expected USER:PASSWORD"),
            (["--log-format", "csv"], "proxyd: --log-format: expected text or json, got 'csv'"),
        ]
        for argv, message in cases:
            with self.assertRaises(SystemExit) as e:
                _parse(*argv)
            self.assertEqual(e.exception.code, message)

    def test_helpListsOptions(self):
        """The usage text lists every option with its default."""
        text = str(tap.Options())
        for option in (
            "--mode=", "--listen=", "--config=", "--allow=", "--proxy-auth=",
            "--proxy-auth-file", "--connect-ports", "--allow-private",
            "--deny-private", "--access-log", "--log-format", "--connect-timeout",
            "--idle-timeout", "--header-timeout", "--max-connections",
            "--max-header-size",
        ):
            self.assertIn(option, text)
        self.assertIn("tcp:8080:interface=127.0.0.1", text)


class _Endpoint:
    def __init__(self, result):
        self.result = result
        self.factories = []

    def listen(self, factory):
        self.factories.append(factory)
        return self.result


class _Port:
    stopped = False

    def stopListening(self):
        self.stopped = True
        return succeed(None)


class ListenerServiceTests(SynchronousTestCase):
    def test_listensWhenPrivileged(self):
        """privilegedStartService listens (before privileges are dropped);
        startService does not listen again; stopService stops the port."""
        port = _Port()
        endpoint = _Endpoint(succeed(port))
        service = ListenerService("tcp:1", endpoint, "factory", MemoryReactor())
        service.privilegedStartService()
        self.assertIs(service.port, port)
        service.startService()
        self.assertEqual(endpoint.factories, ["factory"])
        self.successResultOf(service.stopService())
        self.assertTrue(port.stopped)

    def test_cannotListenIsOneLine(self):
        """A bind failure raises StartupError and prints one line to stderr."""
        error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
        stderr = io.StringIO()
        service = ListenerService(
            "tcp:8080:interface=127.0.0.1", _Endpoint(fail(error)), None, MemoryReactor(),
            stderr=stderr,
        )
        with self.assertRaises(StartupError) as e:
            service.privilegedStartService()
        message = "proxyd: --listen tcp:8080:interface=127.0.0.1: Address already in use"
        self.assertEqual(str(e.exception), message)
        self.assertEqual(e.exception.code, 1)
        self.assertEqual(stderr.getvalue(), message + "\n")
        # twistd's postApplication catches Exception to remove its pid file.
        self.assertIsInstance(e.exception, Exception)
        self.assertIsInstance(e.exception, SystemExit)

    def test_otherErrorIsOneLine(self):
        """Any other error from the endpoint is worded the same way."""
        stderr = io.StringIO()
        service = ListenerService(
            "systemd:domain=INET:index=0", _Endpoint(fail(ValueError("bad fd"))), None,
            MemoryReactor(), stderr=stderr,
        )
        self.assertRaises(StartupError, service.privilegedStartService)
        self.assertEqual(stderr.getvalue(), "proxyd: --listen systemd:domain=INET:index=0: bad fd\n")

    def test_lateFailureStopsReactor(self):
        """An endpoint that fails after start-up is logged and stops the reactor."""

        class Reactor:
            stopped = False

            def stop(self):
                self.stopped = True

        reactor = Reactor()
        d = Deferred()
        service = ListenerService("x:1", _Endpoint(d), None, reactor)
        service.privilegedStartService()
        self.assertFalse(reactor.stopped)
        d.errback(CannotListenError("", 1, OSError(13, "Permission denied")))
        self.assertTrue(reactor.stopped)
        self.flushLoggedErrors()

    def test_stopWhileWaitingCancels(self):
        """Stopping before the port is up cancels the attempt quietly."""
        d = Deferred()
        service = ListenerService("x:1", _Endpoint(d), None, MemoryReactor())
        service.privilegedStartService()
        self.assertIsNone(service.stopService())
        self.assertIsNone(service.port)
        self.assertEqual(self.flushLoggedErrors(), [])


class ProxyServiceTests(SynchronousTestCase):
    def test_oneListenerPerEndpoint(self):
        """One child per --listen, in order; ports are kept for a drain."""
        reactor = MemoryReactor()
        config = ProxyConfig(listen=("tcp:1:interface=127.0.0.1", "tcp:2:interface=127.0.0.1"))
        service = ProxyService(config, "factory", reactor)
        self.assertEqual(
            [child.description for child in service], list(config.listen)
        )
        service.privilegedStartService()
        service.startService()
        self.assertEqual([port for port, _, _, _ in reactor.tcpServers], [1, 2])
        self.assertEqual(len(service.ports), 2)
        self.assertEqual(reactor.tcpServers[0][1], "factory")
        self.successResultOf(service.stopService())
        self.assertEqual(service.ports, [])

    def test_closesAccessLogAfterStop(self):
        """The access log is closed once the listeners have stopped."""

        class Log:
            closed = False

            def close(self):
                self.closed = True

        log = Log()
        service = ProxyService(ProxyConfig(), "factory", MemoryReactor(), accessLog=log)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertTrue(log.closed)


class _ThreadingMemoryReactor(MemoryReactorClock):
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class _NoConnections:
    channels = ()

    def drain(self):
        pass


class SigtermTests(SynchronousTestCase):
    def setUp(self):
        self.addCleanup(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))

    def _startedService(self):
        reactor = _ThreadingMemoryReactor()
        ProxyService(ProxyConfig(), _NoConnections(), reactor).startService()
        trigger = reactor.triggers["during"]["startup"][0][0]
        return reactor, trigger

    def test_sigtermStopsWithoutSignalExit(self):
        """Once the reactor has put in its own handler, SIGTERM is taken
        over so the reactor stops as if asked to, and twistd exits 0."""
        reactor, trigger = self._startedService()
        signal.signal(signal.SIGTERM, lambda *a: None)  # as the reactor does
        trigger()
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        self.assertTrue(reactor.hasStopped)

    def test_noReactorHandlerNoTakeover(self):
        """If the reactor installed no signal handlers, neither do we."""
        reactor, trigger = self._startedService()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        trigger()
        self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)


class EarlySignalTests(SynchronousTestCase):
    """
    Between binding the ports and the reactor's first turn, SIGTERM and
    SIGHUP are not left to their defaults (death by signal).
    """

    def setUp(self):
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
            signal.signal(signum, signal.SIG_DFL)
        self.reactor = _ThreadingMemoryReactor()
        self.service = ProxyService(ProxyConfig(), _NoConnections(), self.reactor)

    def test_sigtermBeforeRunningDrains(self):
        """An early SIGTERM drains and stops the reactor, like a late one."""
        self.service._catchEarlySignals()
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        self.assertTrue(self.service._draining)
        self.reactor.advance(1)
        self.assertTrue(self.reactor.hasStopped)

    def test_reactorInstallsOurs(self):
        """What the reactor will install for SIGTERM when it starts is the
        drain, so no signal lands between its handler and ours."""
        self.service._catchEarlySignals()
        self.assertEqual(self.reactor.sigTerm, self.service._sigterm)

    def test_sighupBeforeRunningReloads(self):
        """An early SIGHUP reloads instead of killing the process."""
        reloads = []
        self.service.reload = lambda: reloads.append(True)
        self.service._catchEarlySignals()
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
        self.assertEqual(reloads, [True])

    def test_othersHandlersKept(self):
        """A handler someone else installed (an embedding program) stays."""
        mine = lambda *a: None  # noqa: E731
        signal.signal(signal.SIGTERM, mine)
        self.service._catchEarlySignals()
        self.assertIs(signal.getsignal(signal.SIGTERM), mine)

    def test_onlyWithTheGlobalReactor(self):
        """privilegedStartService with any other reactor (tests, embedding)
        leaves the process's handlers alone."""
        self.service.privilegedStartService()
        self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)


class MakeServiceTests(SynchronousTestCase):
    def test_assembles(self):
        """makeService gives a ProxyService over a ProxyFactory with the
        config and the access log."""
        from proxyd.factory import ProxyFactory

        log = self.mktemp()
        options = _parse("--listen", "tcp:0:interface=127.0.0.1", "--access-log", log)
        service = tap.makeService(options)
        self.addCleanup(service.accessLog.close)
        self.assertIsInstance(service, ProxyService)
        self.assertTrue(IServiceCollection.providedBy(service))
        self.assertIsInstance(service.factory, ProxyFactory)
        self.assertIs(service.factory.config, options["proxyConfig"])
        self.assertIs(service.factory.accessLog, service.accessLog)
        self.assertEqual(len(service.listeners), 1)

    def test_noAccessLog(self):
        """Without --access-log there is no AccessLog."""
        service = tap.makeService(_parse("--listen", "tcp:0:interface=127.0.0.1"))
        self.assertIsNone(service.accessLog)


def _twistd(*args):
    """
    Run the real twistd with this tree first on the path, from /.
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "proxyd", *args],
        capture_output=True, text=True, timeout=60, cwd="/", env=env,
    )


class RealTwistdTests(SynchronousTestCase):
    """
    What twistd itself does with our errors: stderr redirection and usage
    printing are its own, so only a real run shows them.
    """

    def test_badValue(self):
        """A bad value: one stderr line, exit 1, nothing on stdout."""
        result = _twistd("--mode=bad")
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(
            result.stderr, "proxyd: --mode: expected forward, mitm or reverse, got 'bad'\n"
        )
        self.assertEqual(result.stdout, "")

    def test_portInUse(self):
        """A port in use: one stderr line naming --listen, exit 1, no traceback,
        even though twistd's logging has begun by then."""
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            description = f"tcp:{port}:interface=127.0.0.1"
            result = _twistd("--listen", description)
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(
            result.stderr, f"proxyd: --listen {description}: Address already in use\n"
        )
        self.assertNotIn("Traceback", result.stdout)

    def test_sigtermExitsZero(self):
        """SIGTERM stops a running daemon with exit status 0 (supervisors
        count anything else as a crash)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "proxyd", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env=env,
        )
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)

        def accepts():
            with socket.socket() as client:
                # A connect to a port nobody holds can meet itself (TCP
                # simultaneous open): that is not the daemon listening.
                return client.connect_ex(("127.0.0.1", port)) == 0 and client.getsockname() != client.getpeername()

        waitFor(accepts, timeout=30, message="proxyd to start listening")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, (stdout, stderr))
        self.assertEqual(stderr, b"")


class FileLimitTests(SynchronousTestCase):
    """raiseFileLimit lifts the soft open-file limit within the hard one."""

    class FakeResource:
        RLIMIT_NOFILE = 7
        RLIM_INFINITY = -1

        def __init__(self, soft, hard):
            self.limits = (soft, hard)

        def getrlimit(self, which):
            return self.limits

        def setrlimit(self, which, limits):
            self.limits = limits

    def test_raisedWithinHard(self):
        """A soft limit of 1024 is raised to what is wanted, capped by the hard limit."""
        from proxyd.service import raiseFileLimit

        res = self.FakeResource(1024, 4096)
        self.assertEqual(raiseFileLimit(20064, res), 4096)
        self.assertEqual(res.limits, (4096, 4096))
        res = self.FakeResource(1024, 524288)
        self.assertEqual(raiseFileLimit(20064, res), 20064)

    def test_neverLowered(self):
        from proxyd.service import raiseFileLimit

        res = self.FakeResource(65536, 524288)
        self.assertEqual(raiseFileLimit(20064, res), 65536)
        self.assertEqual(res.limits, (65536, 524288))


class DrainTests(SynchronousTestCase):
    """SIGTERM's drain, on a FakeProxy: idle connections close at once, busy ones finish, the timeout ends the rest."""

    def _service(self, drainTimeout=30.0):
        from proxyd.testing import FakeProxy

        proxy = FakeProxy(drainTimeout=drainTimeout)
        service = ProxyService(proxy.config, proxy.factory, proxy.reactor)
        return proxy, service

    def test_idleClosedBusyFinishes(self):
        proxy, service = self._service()
        idle, idleT = proxy.client()
        busy, busyT = proxy.client()
        busy.dataReceived(b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        up, upT = proxy.acceptUpstream()
        service.drain()
        self.assertTrue(idleT.disconnecting, "an idle keep-alive client does not hold the drain up")
        self.assertFalse(busyT.disconnecting)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(busyT.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"Connection: close", busyT.value())
        self.assertTrue(busyT.disconnecting, "closed once its response is complete")
        from proxyd.factory import _Refuse

        self.assertIsInstance(proxy.factory.buildProtocol(None), _Refuse, "no new connections while draining")

    def test_timeoutAbortsTheRest(self):
        proxy, service = self._service(drainTimeout=5.0)
        stopped = []
        proxy.reactor.stop = lambda: stopped.append(True)
        busy, busyT = proxy.client()
        busy.dataReceived(b"GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        service.drain()
        proxy.reactor.advance(4.9)
        self.assertEqual(stopped, [])
        aborted = []
        busyT.abortConnection = lambda: (aborted.append(True), proxy.factory.connectionClosed(busy))
        proxy.reactor.advance(0.2)
        self.assertEqual((aborted, stopped), ([True], [True]))

    def test_noConnectionsStopsAtOnce(self):
        proxy, service = self._service()
        stopped = []
        proxy.reactor.stop = lambda: stopped.append(True)
        service.drain()
        self.assertEqual(stopped, [True])
