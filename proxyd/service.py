# -*- test-case-name: tests.unit.test_tap -*-
"""
The daemon's service tree: one L{ListenerService} per --listen under a
L{ProxyService}.
"""

import gc
import signal
import sys

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure


class StartupError(SystemExit, Exception):
    """
    A start-up failure after twistd's logging has begun: exit status 1 and
    no traceback.

    It is a L{SystemExit} so that the interpreter exits quietly, and an
    L{Exception} so that twistd still removes its pid file and passes the
    message to the parent through the daemonising status pipe.  By now
    twistd has turned C{sys.stderr} into log events, so whoever raises it
    prints the line to the real stderr first (L{ListenerService} does).
    """

    def __init__(self, message):
        SystemExit.__init__(self, 1)
        self.message = message

    def __str__(self):
        return self.message


class ListenerService(Service):
    """
    Listens on one endpoint before privileges are dropped, like
    L{twisted.application.internet.StreamServerEndpointService}, but a
    failure stops start-up with one line instead of a logged traceback.

    @ivar port: the L{IListeningPort} once listening, for a later drain.
    """

    _log = Logger()

    def __init__(self, description, endpoint, factory, reactor, stderr=None, option="--listen"):
        """
        @param stderr: where a start-up failure is printed; the process's
            real stderr by default.
        @param option: the option that named this endpoint, for that line.
        """
        self.option = option
        self.description = description
        self._stderr = stderr
        self.endpoint = endpoint
        self.factory = factory
        self._reactor = reactor
        self.port = None
        self._waiting = None
        self._starting = False
        self._failedNow = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self._failedNow = None
        self._starting = True
        self._waiting = self.endpoint.listen(self.factory)
        self._waiting.addBoth(self._settled)
        self._starting = False
        if self._failedNow is not None:
            stderr = self._stderr or sys.__stderr__
            stderr.write(self._failedNow + "\n")
            stderr.flush()
            raise StartupError(self._failedNow)

    def _settled(self, result):
        self._waiting = None
        if not isinstance(result, Failure):
            self.port = result
            return None
        if result.check(CancelledError):
            return None
        message = f"proxyd: {self.option} {self.description}: {_reason(result.value)}"
        if self._starting:
            self._failedNow = message
        else:
            # No stock endpoint settles late; if one does, still stop.
            self._log.critical("{message}", message=message)
            self._reactor.stop()
        return None

    def startService(self):
        Service.startService(self)
        if self.port is None and self._waiting is None:
            self.privilegedStartService()

    def stopService(self):
        Service.stopService(self)
        if self._waiting is not None:
            self._waiting.cancel()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def raiseFileLimit(wanted, resource=None):
    """
    Raise the soft limit on open files toward C{wanted} (two per tunnel or
    proxied request), within the hard limit: a login shell's default soft
    limit of 1024 would cap proxyd at about 500 tunnels.

    @return: the soft limit now in force.
    """
    if resource is None:
        import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            Logger().warn("Could not raise the open-file limit to {n}: {e}", n=target, e=e)
            return soft
        ListenerService._log.info("Open-file limit raised from {old} to {new}", old=soft, new=target)
        return target
    return soft


def _reason(error):
    """
    C{"Address already in use"} rather than C{"Couldn't listen on ..."}.
    """
    if isinstance(error, CannotListenError):
        socketError = error.socketError
        return getattr(socketError, "strerror", None) or str(socketError)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _freezeStartupHeap():
    """
    Move what start-up made (Twisted, OpenSSL bindings, the CA, plugins:
    most of the heap, and never garbage) out of the collector's sight, so
    the collections that requests trigger stay short.
    """
    gc.collect()
    gc.freeze()


class PluginStartError(Exception):
    """A plugin's service would not start on a reload; one line."""


class ProxyService(MultiService):
    """
    The root of proxyd's services: the listeners, and the access log closed
    once they have stopped.
    """

    _log = Logger()

    def __init__(self, config, factory, reactor, accessLog=None, endpointFactory=None, reloader=None):
        """
        @param endpointFactory: C{(reactor, description) -> endpoint};
            L{serverFromString} unless a test gives another.
        @param reloader: a L{proxyd.reconfig.Reloader} that reads the
            command line and config file again on SIGHUP; without one,
            SIGHUP only reopens the access log.
        """
        MultiService.__init__(self)
        self._reactor = reactor
        self.reloader = reloader
        self._draining = False
        self._toldStopping = False
        if endpointFactory is None:
            from twisted.internet.endpoints import serverFromString as endpointFactory
        self.config = config
        self.factory = factory
        self.accessLog = accessLog
        self.listeners = []
        # Plugins with a life of their own (har's file) start before the
        # listeners and stop after them (MultiService stops in reverse).
        from twisted.application.service import IService

        for plugin in config.plugins:
            if IService.providedBy(plugin.rewriter):
                plugin.rewriter.setServiceParent(self)
        listenFactory = factory
        if config.serverTLS is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            # Every listener speaks TLS: reverse mode's site, or an "HTTPS
            # proxy" in forward/mitm mode.
            listenFactory = TLSMemoryBIOFactory(config.serverTLS, False, factory)
            listenFactory.noisy = False
        for description in config.listen:
            listener = ListenerService(
                description, endpointFactory(reactor, description), listenFactory, reactor
            )
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if config.metrics is not None:
            from proxyd.metricsexport import metricsFactory

            # Its own listener, bound before privileges drop like the others.
            self.metricsListener = ListenerService(
                config.metrics, endpointFactory(reactor, config.metrics), metricsFactory(factory.metrics, reactor), reactor,
                option="--metrics",
            )
            self.metricsListener.setServiceParent(self)

    @property
    def ports(self):
        """
        The listening ports, once started.
        """
        return [listener.port for listener in self.listeners if listener.port]

    def privilegedStartService(self):
        raiseFileLimit(2 * self.config.maxConnections + 64)
        from twisted.internet import reactor as globalReactor

        if self._reactor is globalReactor and not self._reactor.running:
            self._catchEarlySignals()
        MultiService.privilegedStartService(self)

    def _catchEarlySignals(self):
        """
        The ports accept as soon as they are bound, but the reactor puts in
        its signal handlers only once it runs, and then the one for SIGTERM
        stops it with the signal re-raised (exit -15): a supervisor's early
        SIGTERM must drain and exit 0 like a late one, and a SIGHUP must not
        kill the process.  So ours go in before the ports are bound (queued
        for the reactor's first turn), and the reactor's C{sigTerm} (what
        it installs for SIGTERM when it starts) becomes ours too.
        """
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._reactor.sigTerm = self._sigterm
        if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            signal.signal(signal.SIGHUP, self._sighup)

    def startService(self):
        # After twistd's --uid/--gid: what is opened from now on is checked
        # as the run user, before the plugins' services open their files.
        from proxyd.privileges import checkAfterDrop

        checkAfterDrop(self.config)
        MultiService.startService(self)
        # "during", straight after the reactor puts in its own handlers.
        self._reactor.addSystemEventTrigger("during", "startup", self._catchSigterm)
        self._reactor.addSystemEventTrigger("after", "startup", _freezeStartupHeap)
        from proxyd.sdnotify import Notifier

        # Under systemd (Type=notify): ready once every port is bound (they
        # are, by now), stopping when shutdown begins.
        self.notifier = Notifier.fromEnvironment(reactor=self._reactor)
        self._reactor.addSystemEventTrigger("after", "startup", self._ready)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._stopping)
        serverTLS = self.config.serverTLS
        if serverTLS is not None:
            self._log.info(
                "TLS on every listener: certificates for {names} (the first is the default), "
                "TLS {tlsMin}+{clientCA}",
                names=", ".join(serverTLS.names) or "(no names)",
                tlsMin=self.config.tlsMin,
                clientCA=", client certificates required" if self.config.clientCA else "",
            )

    def _stopping(self):
        """STOPPING=1, once: when the drain begins, or at shutdown without one."""
        if not self._toldStopping:
            self._toldStopping = True
            self.notifier.stopping()

    def _ready(self):
        self.notifier.ready()
        self.notifier.startWatchdog()

    def _catchSighup(self):
        """SIGHUP reloads what can change under a running daemon (SPEC)."""
        if not hasattr(signal, "SIGHUP"):
            return
        signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum, frame):
        self._reactor.callFromThread(self.reload)

    def reload(self):
        """
        SIGHUP: read the configuration again and run with it if all of it is
        valid (else the old one stays, and one line says why), then reopen
        the access log.  Open connections are not touched.
        """
        notifier = getattr(self, "notifier", None)
        if notifier is not None:
            notifier.reloading()
        if self.reloader is not None:
            self._reloadConfig()
        if self.accessLog is not None:
            self.accessLog.reopen()
        if notifier is not None:
            notifier.ready()

    def _reloadConfig(self):
        from proxyd.reconfig import ConfigError, adoptListenerTLS, keepRunning

        where = self.reloader.configFile or "the command line"
        try:
            reload = self.reloader.read(self.config)
        except ConfigError as e:
            self._log.error("SIGHUP: configuration not reloaded, the old one stays: {why}", why=str(e))
            return
        config = keepRunning(self.config, reload.config)
        try:
            self._swapPluginServices(self.config.plugins, config.plugins)
        except PluginStartError as e:
            self._log.error("SIGHUP: configuration not reloaded, the old one stays: {why}", why=str(e))
            return
        config = adoptListenerTLS(self.config, config)
        self.factory.reconfigure(config)
        self.config = config
        self.reloader.applied(reload)
        if reload.restartOnly:
            self._log.warn(
                "SIGHUP: {options}: changed in {where}, but applied only by a restart; the running value stays",
                options=", ".join("--" + name for name in reload.restartOnly),
                where=where,
            )
        self._log.info(
            "SIGHUP: configuration reloaded from {where}{tls}",
            where=where,
            tls=" (certificates for {})".format(", ".join(config.serverTLS.names)) if config.serverTLS is not None else "",
        )

    def _swapPluginServices(self, old, new):
        """
        Plugins with a life of their own that a reload dropped stop, new
        ones start.  If one cannot start (a har file the run user cannot
        write), the new ones stop again, the dropped ones start again, and
        L{PluginStartError} says why: the reload is refused whole.
        """
        from twisted.application.service import IService

        kept = {id(plugin.rewriter) for plugin in new}
        running = {id(plugin.rewriter) for plugin in old}
        dropped = [p.rewriter for p in old if id(p.rewriter) not in kept and IService.providedBy(p.rewriter)]
        added = [p for p in new if id(p.rewriter) not in running and IService.providedBy(p.rewriter)]
        for service in dropped:
            service.disownServiceParent()
        started = []
        for plugin in added:
            try:
                plugin.rewriter.setServiceParent(self)
            except Exception as e:
                if plugin.rewriter.parent is self:
                    started.append(plugin.rewriter)
                for service in started:
                    service.disownServiceParent()
                for service in dropped:
                    service.setServiceParent(self)
                raise PluginStartError(f"--plugin {plugin.label}: could not start: {e}") from e
            started.append(plugin.rewriter)

    def _catchSigterm(self):
        """
        twistd re-raises the signal that stopped the reactor, so SIGTERM
        would exit with -15; supervisors expect 0 for a clean stop (SPEC).
        Only replaces a handler the reactor installed.
        """
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            return
        signal.signal(signal.SIGTERM, self._sigterm)
        self._catchSighup()

    def _sigterm(self, signum, frame):
        self._reactor.callFromThread(self.drain)

    def drain(self):
        """
        SIGTERM: stop accepting, close idle connections at once, let
        requests and tunnels in flight finish for up to --drain-timeout,
        then stop (exit 0).
        """
        if self._draining:
            return
        self._draining = True
        factory = self.factory
        self._log.info(
            "Received SIGTERM: draining {n} connection(s) for up to {t:g}s",
            n=len(factory.channels),
            t=self.config.drainTimeout,
        )
        if getattr(self, "notifier", None) is not None:
            self._stopping()
        for listener in self.listeners:
            port, listener.port = listener.port, None
            if port is not None:
                port.stopListening()
        factory.drain()
        deadline = self._reactor.seconds() + self.config.drainTimeout

        def check():
            if factory.channels and self._reactor.seconds() < deadline:
                return
            poll.stop()
            if factory.channels:
                self._log.info("Drain timeout: closing {n} connection(s) still open", n=len(factory.channels))
                for channel in list(factory.channels):
                    channel.transport.abortConnection()
            self._reactor.stop()

        poll = LoopingCall(check)
        poll.clock = self._reactor
        poll.start(0.05, now=True)

    def stopService(self):
        notifier = getattr(self, "notifier", None)
        if notifier is not None:
            notifier.stopWatchdog()
        d = MultiService.stopService(self)
        if self.accessLog is not None:
            d.addBoth(self._closeLog)
        return d

    def _closeLog(self, result):
        self.accessLog.close()
        return result
