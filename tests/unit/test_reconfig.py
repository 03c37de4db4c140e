"""
SIGHUP's configuration reload (L{proxyd.reconfig}, L{ProxyService.reload},
L{ProxyFactory.reconfigure}, and the channel picking it up between
requests): read again, checked whole, applied only if all of it is valid.
"""

from ipaddress import ip_network

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from proxyd import tap
from proxyd.factory import ProxyFactory
from proxyd.reconfig import ConfigError, Reloader, keepRunning
from proxyd.service import ProxyService
from proxyd.testing import HalfCloseTransport


def _options(*argv):
    options = tap.Options(reactor=MemoryReactorClock())
    options.parseOptions([str(a) for a in argv])
    return options


class _Logged:
    def __init__(self, testCase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, level=None):
        from twisted.logger import formatEvent

        return [
            formatEvent(e) for e in self.events
            if "SIGHUP" in formatEvent(e) and (level is None or e.get("log_level") == level)
        ]


class ReloaderTests(SynchronousTestCase):
    def setUp(self):
        self.file = self.mktemp()
        self.write('allow = ["127.0.0.0/8"]\nconnect-ports = "443"\n')

    def write(self, text):
        with open(self.file, "w") as f:
            f.write(text)

    def reloader(self, *argv):
        options = _options("--config", self.file, *argv)
        return options["proxyConfig"], Reloader(options, MemoryReactorClock(), options["configValues"])

    def test_fileChangeApplies(self):
        """A policy changed in the file is in the new config; nothing needs a restart."""
        current, reloader = self.reloader()
        self.write('allow = ["10.0.0.0/8"]\nconnect-ports = "443,8443"\n')
        reload = reloader.read(current)
        self.assertEqual(reload.config.allow, (ip_network("10.0.0.0/8"),))
        self.assertIn(8443, reload.config.connectPorts)
        self.assertEqual(reload.restartOnly, ())

    def test_commandLineStillWins(self):
        """An option given on the command line keeps its value whatever the file says."""
        current, reloader = self.reloader("--allow", "192.168.0.0/16")
        self.write('allow = ["10.0.0.0/8"]\n')
        self.assertEqual(reloader.read(current).config.allow, (ip_network("192.168.0.0/16"),))

    def test_badValueRefusedWhole(self):
        """One bad value: ConfigError naming the option and the file; nothing to apply."""
        current, reloader = self.reloader()
        self.write('allow = ["10.0.0.0/8"]\nconnect-timeout = -1\n')
        e = self.assertRaises(ConfigError, reloader.read, current)
        self.assertIn("--connect-timeout", str(e))
        self.assertIn(self.file, str(e))

    def test_brokenToml(self):
        current, reloader = self.reloader()
        self.write("allow = [\n")
        self.assertRaises(ConfigError, reloader.read, current)

    def test_restartOnlyKeepsRunningValue(self):
        """--listen and --mode changes are reported and the running values kept."""
        current, reloader = self.reloader()
        self.write('allow = ["10.0.0.0/8"]\nlisten = ["tcp:9999:interface=127.0.0.1"]\nmode = "reverse"\n')
        reload = reloader.read(current)
        self.assertEqual(set(reload.restartOnly), {"listen", "mode"})
        self.assertEqual(reload.config.listen, current.listen)
        self.assertEqual(reload.config.mode, "forward")
        self.assertEqual(reload.config.allow, (ip_network("10.0.0.0/8"),))

    def test_appliedBecomesTheBaseline(self):
        """Once applied, a restart-only option is compared with what runs, not with what was read."""
        current, reloader = self.reloader()
        self.write('allow = ["10.0.0.0/8"]\n')
        reload = reloader.read(current)
        reloader.applied(reload)
        self.assertEqual(reloader.read(reload.config).restartOnly, ())


class KeepRunningTests(SynchronousTestCase):
    def test_listenerTLSAdopted(self):
        """The running ServerTLS (wrapped into the ports) takes the new one's state and stays the config's."""
        from proxyd.reconfig import adoptListenerTLS

        class TLS:
            def __init__(self):
                self.adopted = []

            def adopt(self, other):
                self.adopted.append(other)

        import attr

        base = _options()["proxyConfig"]
        current, new = attr.evolve(base, serverTLS=TLS()), attr.evolve(base, serverTLS=TLS())
        result = adoptListenerTLS(current, new)
        self.assertIs(result.serverTLS, current.serverTLS)
        self.assertEqual(current.serverTLS.adopted, [new.serverTLS])

    def test_unchangedPluginKeepsItsRewriter(self):
        """A plugin with the same name and settings keeps its running rewriter; a changed one is new."""
        old = _options("--plugin", "headers:set-request=X-A:1", "--plugin", "block:hosts=a.example")["proxyConfig"]
        new = _options("--plugin", "headers:set-request=X-A:1", "--plugin", "block:hosts=b.example")["proxyConfig"]
        kept = keepRunning(old, new)
        self.assertIs(kept.plugins[0].rewriter, old.plugins[0].rewriter)
        self.assertIs(kept.plugins[1].rewriter, new.plugins[1].rewriter)


def _client(factory, host="127.0.0.1"):
    proto = factory.buildProtocol(IPv4Address("TCP", host, 50000))
    transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", host, 50000))
    proto.makeConnection(transport)
    return proto, transport


class ServiceReloadTests(SynchronousTestCase):
    """SIGHUP through the service: applied, refused whole, or partly restart-only."""

    def setUp(self):
        self.file = self.mktemp()
        self.write('allow = ["127.0.0.0/8"]\n')
        options = _options("--config", self.file, "--connect-ports", "*")
        self.reactor = MemoryReactorClock()
        config = options["proxyConfig"]
        self.factory = ProxyFactory(config, self.reactor)
        self.service = ProxyService(
            config, self.factory, self.reactor,
            reloader=Reloader(options, self.reactor, options["configValues"]),
            endpointFactory=lambda reactor, description: None,
        )
        self.logged = _Logged(self)

    def write(self, text):
        with open(self.file, "w") as f:
            f.write(text)

    def get(self, transport, proto):
        transport.clear()
        proto.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        return transport.value()

    def test_newConnectionsUseNewPolicy(self):
        """After a reload that drops 127/8 from --allow, a new connection from it is refused."""
        self.write('allow = ["10.0.0.0/8"]\n')
        self.service.reload()
        self.assertIs(self.factory.config, self.service.config)
        proto, transport = _client(self.factory)
        self.assertTrue(self.get(transport, proto).startswith(b"HTTP/1.1 403 "))
        self.assertEqual(len(self.logged.lines(LogLevel.info)), 1)
        self.assertEqual(self.logged.lines(LogLevel.error), [])

    def test_keepAliveConnectionTakesItAtItsNextRequest(self):
        """A connection open before the reload gets the new policy at its next request, not in the middle of one."""
        proto, transport = _client(self.factory)
        self.assertEqual(self.get(transport, proto), b"")  # allowed: an upstream connection is being made
        self.write('allow = ["10.0.0.0/8"]\n')
        self.service.reload()
        self.assertIsNot(proto.config, self.factory.config)  # the request in flight keeps its config
        host, port, upstreamFactory, timeout, bind = self.reactor.tcpClients[0]
        upstream = upstreamFactory.buildProtocol(IPv4Address("TCP", host, port))
        upstream.makeConnection(HalfCloseTransport(peerAddress=IPv4Address("TCP", host, port)))
        upstream.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 204 "))
        self.assertTrue(self.get(transport, proto).startswith(b"HTTP/1.1 403 "))
        self.assertIs(proto.config, self.factory.config)

    def test_badFileKeepsEverythingAndLogsOneLine(self):
        """A file with one bad value: nothing changes, one error line names the option."""
        before = self.factory.config
        self.write('allow = ["10.0.0.0/8"]\nmax-header-size = 12\n')
        self.service.reload()
        self.assertIs(self.factory.config, before)
        errors = self.logged.lines(LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("--max-header-size", errors[0])
        self.assertIn("the old one stays", errors[0])
        proto, transport = _client(self.factory)
        self.assertEqual(self.get(transport, proto), b"")  # 127.0.0.1 is still allowed

    def test_restartOnlyChangeIsOneWarning(self):
        """--listen changed: one warning naming it; the rest of the file applies."""
        self.write('allow = ["10.0.0.0/8"]\nlisten = ["tcp:9999"]\n')
        self.service.reload()
        warnings = self.logged.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("--listen", warnings[0])
        self.assertEqual(self.factory.config.allow, (ip_network("10.0.0.0/8"),))

    def test_pluginAddedByReload(self):
        """A plugin added to the file runs on the next request (its hooks are called)."""
        self.write('allow = ["127.0.0.0/8"]\nplugin = ["block:hosts=example.com"]\n')
        self.service.reload()
        proto, transport = _client(self.factory)
        self.assertTrue(self.get(transport, proto).startswith(b"HTTP/1.1 403 "))


def _servicePlugin(label, fail=False):
    from twisted.application.service import Service

    from proxyd.pluginload import LoadedPlugin

    class Recorder(Service):
        def startService(self):
            Service.startService(self)
            if fail:
                raise PermissionError("[Errno 13] Permission denied: 'flows.har'")

    return LoadedPlugin(label, label, {}, Recorder())


class PluginServiceSwapTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        config = _options()["proxyConfig"]
        self.service = ProxyService(config, ProxyFactory(config, self.reactor), self.reactor,
                                    endpointFactory=lambda reactor, description: None)
        self.service.running = 1  # as after start-up: added services start at once

    def test_dropAndAdd(self):
        old, new = _servicePlugin("a"), _servicePlugin("b")
        old.rewriter.setServiceParent(self.service)
        self.service._swapPluginServices((old,), (new,))
        self.assertFalse(old.rewriter.running)
        self.assertTrue(new.rewriter.running)
        self.assertIs(new.rewriter.parent, self.service)

    def test_failedStartRollsBack(self):
        """A new plugin that cannot start: the others stop again, the dropped one runs again, one error to report."""
        from proxyd.service import PluginStartError

        old, good, bad = _servicePlugin("a"), _servicePlugin("b"), _servicePlugin("har", fail=True)
        old.rewriter.setServiceParent(self.service)
        e = self.assertRaises(PluginStartError, self.service._swapPluginServices, (old,), (good, bad))
        self.assertIn("--plugin har: could not start", str(e))
        self.assertTrue(old.rewriter.running)
        self.assertFalse(good.rewriter.running)
        self.assertFalse(bad.rewriter.running)
        self.assertEqual([s for s in self.service if s in (good.rewriter, bad.rewriter)], [])
