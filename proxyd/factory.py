# -*- test-case-name: tests.unit.test_channel -*-
"""
ProxyFactory: what every client connection shares (configuration, the
upstream pool and connector, the leaf factory and server TLS contexts of
mitm mode, the access log), and the --max-connections gate.
"""

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from proxyd.channel import ProxyChannel
from proxyd.connect import UpstreamConnector
from proxyd.errors import errorResponse
from proxyd.upstream import UpstreamPool


class _Refuse(Protocol):
    """Over --max-connections: a short 503, then close."""

    def connectionMade(self):
        self.transport.write(errorResponse(503, "too many connections; try again later"))
        self.transport.loseConnection()


class ProxyFactory(Factory):
    noisy = False
    """
    Builds a L{ProxyChannel} per client connection and holds what they share:
    configuration, the upstream pool and connector, the access log.
    """

    _log = Logger()

    def __init__(self, config, reactor, accessLog=None, metrics=None):
        from proxyd.metrics import NullMetrics
        from proxyd.policy import ClientPolicy

        self.metrics = metrics if metrics is not None else NullMetrics()

        self.config = config
        self.clock = reactor
        self.reactor = reactor
        self.accessLog = accessLog
        self.clientPolicy = ClientPolicy(config.allow)
        addressPolicy = config.addressPolicy
        self.router = None
        if config.mode == "reverse":
            from proxyd.backends import buildRouter
            from proxyd.policy import AddressPolicy

            # The operator named the backends: private addresses are the
            # usual place for them.
            addressPolicy = AddressPolicy(allowPrivate=True, allowLinkLocal=True)
            self.router = buildRouter(list(config.upstreams), list(config.routes), reactor)
        self.listenerTLS = config.serverTLS  # the listener's own TLS, if any
        self.scheme = b"https" if config.serverTLS is not None else b"http"
        self.connector = UpstreamConnector(reactor, addressPolicy, config.connectTimeout, self.metrics)
        self.pool = UpstreamPool(
            reactor,
            self.connector,
            maxHeadSize=config.maxHeaderSize,
            idleTimeout=min(config.idleTimeout, 60.0),
            trustRoot=config.trustRoot,
            tlsInsecure=config.upstreamInsecure,
        )
        self.pipeline = self._pipeline(config)
        self.channels = set()
        self.draining = False
        self._saturated = False
        self.leaves = None
        self._serverTLS = {}
        if config.ca is not None:
            from proxyd.ca import LeafFactory

            self.leaves = LeafFactory(config.ca, config.leafKey, clock=reactor)
            self.metrics.trackLeaves(self.leaves)
            self._log.info(
                "mitm: CA certificate {path} (SHA-256 {fingerprint}){created}. "
                "Clients must trust it: curl --cacert {path}; see 'proxyd ca --help' for browsers and Python",
                path=config.ca.certPath,
                fingerprint=config.ca.fingerprint,
                created=", created now" if config.ca.created else "",
            )
        if config.upstreamInsecure:
            self._log.warn("--upstream-insecure: upstream TLS certificates are NOT verified")

    def _pipeline(self, config):
        from proxyd.pipeline import Pipeline, Stage

        pipeline = Pipeline(
            [Stage(p.label, p.rewriter) for p in config.plugins],
            self.reactor,
            config.maxBodyBuffer,
            config.pluginTimeout,
        )
        pipeline.runner.metrics = self.metrics
        return pipeline

    def reconfigure(self, config):
        """
        Run with a reloaded, already checked config (SIGHUP): new
        connections use it at once, open ones from their next request on
        (L{ProxyChannel._requestHead}); what is in flight finishes as it
        began.  The listeners, mode, CA and access log stay (see
        L{proxyd.reconfig}).
        """
        from proxyd.policy import ClientPolicy

        old = self.config
        self.clientPolicy = ClientPolicy(config.allow)
        if self.router is None:
            self.connector.addressPolicy = config.addressPolicy
        elif (config.upstreams, config.routes) != (old.upstreams, old.routes):
            from proxyd.backends import buildRouter

            self.router = buildRouter(list(config.upstreams), list(config.routes), self.reactor)
        self.connector.connectTimeout = config.connectTimeout
        self.pool.maxHeadSize = config.maxHeaderSize
        self.pool.idleTimeout = min(config.idleTimeout, 60.0)
        if (config.upstreamCA, config.upstreamInsecure) != (old.upstreamCA, old.upstreamInsecure):
            self.pool.retrust(config.trustRoot, config.upstreamInsecure)
        self.pipeline = self._pipeline(config)
        self.config = config
        if config.upstreamInsecure and not old.upstreamInsecure:
            self._log.warn("--upstream-insecure: upstream TLS certificates are NOT verified")

    def serverTLS(self, leaf):
        """
        The server-side TLS options for an intercepted host: its leaf, the
        CA after it, TLS 1.2+, ALPN http/1.1.  Made once per leaf.
        """
        from twisted.internet.ssl import CertificateOptions, TLSVersion

        options = self._serverTLS.get(leaf.serial)
        if options is None:
            options = CertificateOptions(
                privateKey=leaf.key,
                certificate=leaf.certificate,
                extraCertChain=[self.leaves.ca.certificate],
                raiseMinimumTo=TLSVersion.TLSv1_2,
                acceptableProtocols=[b"http/1.1"],
            )
            if len(self._serverTLS) >= self.leaves.cacheSize:
                self._serverTLS.pop(next(iter(self._serverTLS)))
            self._serverTLS[leaf.serial] = options
        return options

    def connectDecision(self, target):
        """
        What to do with a CONNECT: --passthrough first, then the plugins'
        connect policies in --plugin order.

        @param target: a L{proxyd.message.ConnectTarget}.
        @return: Deferred[INTERCEPT | TUNNEL | Deny | None].
        """
        from twisted.internet.defer import succeed

        from proxyd.mitm import TUNNEL, connectDecision

        if self.config.passthrough and connectDecision(self.config, target.host, target.sni) == TUNNEL:
            return succeed(TUNNEL)
        return self.pipeline.runConnect(target)

    def buildProtocol(self, addr):
        if self.draining:
            return _Refuse()
        if len(self.channels) >= self.config.maxConnections:
            if not self._saturated:
                self._saturated = True
                self._log.warn("--max-connections {n} reached; refusing new connections", n=self.config.maxConnections)
            return _Refuse()
        self._saturated = False
        return ProxyChannel(self)

    def drain(self):
        """SIGTERM: idle connections close now, busy ones after what is in flight."""
        self.draining = True
        for channel in list(self.channels):
            channel.drain()

    def connectionOpened(self, channel):
        self.channels.add(channel)
        self.metrics.connectionOpened()

    def connectionClosed(self, channel):
        self.channels.discard(channel)
        self.metrics.connectionClosed()

    def doStop(self):
        self.pool.closeAll()
