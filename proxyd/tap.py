# -*- test-case-name: tests.unit.test_tap -*-
"""
C{twistd proxyd}: the command line, and the service it builds.

Options only collect; postOptions checks everything through
L{proxyd.config} and turns a problem into one line on stderr and a
non-zero exit (a UsageError would print the whole usage text); makeService
only assembles, because anything it raises is a traceback.
"""

import sys

from twisted.python import usage

from proxyd import config


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "HTTP(S) proxy daemon. Every option can also be set in the TOML file "
        "given with --config (same names, without the dashes); the command "
        "line wins."
    )

    optFlags = [
        ["allow-private", None, "Let upstream connections reach loopback, "
         "private and link-local addresses."],
        ["upstream-insecure", None, "Do not verify upstream TLS certificates "
         "(logged as a warning at start and on every connection)."],
        ["list-plugins", None, "Print the plugins found (with --plugin-path) "
         "and exit."],
        ["deny-private", None, "Never let upstream connections reach loopback, "
         "private or link-local addresses. [default: allowed while every "
         "listener is loopback-only]"],
    ]

    # Defaults are None so that a value from --config can tell it was not
    # given here; the real defaults live in proxyd.config.ProxyConfig.
    optParameters = [
        ["mode", None, None, "forward, mitm or reverse. [default: forward]"],
        ["config", None, None, "TOML file with the same option names."],
        ["proxy-auth", None, None, "USER:PASSWORD required in "
         "Proxy-Authorization: Basic."],
        ["proxy-auth-file", None, None, "File of user:password or htpasswd "
         "bcrypt (user:$2y$...) lines."],
        ["connect-ports", None, None, "Ports CONNECT may reach: 443,8443, "
         "ranges like 1000-2000, or *. [default: 443]"],
        ["access-log", None, None, "File for one line per request or tunnel; "
         "- for stdout."],
        ["log-format", None, None, "text or json, for the access log. "
         "[default: text]"],
        ["connect-timeout", None, None, "Seconds to connect upstream. "
         "[default: 10]"],
        ["idle-timeout", None, None, "Seconds a connection may sit idle. "
         "[default: 300]"],
        ["header-timeout", None, None, "Seconds to receive a request head. "
         "[default: 30]"],
        ["max-connections", None, None, "Concurrent client connections. "
         "[default: 10000]"],
        ["max-header-size", None, None, "Bytes of request or response head. "
         "[default: 65536]"],
        ["ca-dir", None, None, "mitm: directory of ca.pem and ca.key, created "
         "on first start. [default: $PROXYD_HOME, else ~/.proxyd]"],
        ["ca-cert", None, None, "mitm: use this CA certificate (with --ca-key)."],
        ["ca-key", None, None, "mitm: the key of --ca-cert."],
        ["max-body-buffer", None, None, "Largest body a plugin may ask to see "
         "whole (bytes, or 64k, 10MiB); larger ones pass through untouched. "
         "[default: 10MiB]"],
        ["plugin-timeout", None, None, "Seconds a plugin hook may take before "
         "the request is answered 504. [default: 30]"],
        ["drain-timeout", None, None, "Seconds SIGTERM waits for requests and "
         "tunnels in flight before closing them. [default: 30]"],
        ["metrics", None, None, "Endpoint serving Prometheus metrics at "
         "/metrics and ok at /healthz, e.g. tcp:9100:interface=127.0.0.1."],
        ["tls-min", None, None, "Lowest TLS version the listener accepts: "
         "1.2 or 1.3. [default: 1.2]"],
        ["client-ca", None, None, "PEM file of CAs: require and verify client "
         "certificates on the listener (mutual TLS)."],
        ["tls-key-password-file", None, None, "File of passphrases for "
         "encrypted --tls-key files, one a line, tried in turn."],
        ["leaf-key", None, None, "mitm: ecdsa (one P-256 key for all leaves) "
         "or rsa (one RSA-2048 key). [default: ecdsa]"],
    ]

    def __init__(self, reactor=None):
        """
        @param reactor: for tests; the global reactor otherwise.
        """
        usage.Options.__init__(self)
        self._reactor = reactor
        self["listen"] = []
        self["allow"] = []
        self["passthrough"] = []
        self["upstream-ca"] = []
        self["plugin"] = []
        self["plugin-path"] = []
        self["tls-cert"] = []
        self["tls-key"] = []
        self["upstream"] = []
        self["route"] = []

    def opt_tls_cert(self, path):
        """Certificate chain (PEM, leaf first) for the listener; pair it with --tls-key; repeatable (SNI picks, the first is the default). Required in reverse mode; in forward/mitm it makes the proxy speak HTTPS."""  # noqa: E501
        self["tls-cert"].append(path)

    def opt_tls_key(self, path):
        """The private key of the --tls-cert before it; repeatable."""
        self["tls-key"].append(path)

    def opt_upstream(self, url):
        """reverse: backend http:// or https:// URL (with an optional path prefix); repeatable, round robin, a dead one is skipped."""  # noqa: E501
        self["upstream"].append(url)

    def opt_route(self, route):
        """reverse: HOST=URL sends requests for HOST (a name or *.glob) to that backend; repeatable."""  # noqa: E501
        self["route"].append(route)

    def opt_plugin(self, spec):
        """NAME[:key=value,...]: enable a rewriting plugin; repeatable, applied in the order given."""
        self["plugin"].append(spec)

    def opt_plugin_path(self, directory):
        """Another directory searched for plugins; repeatable. [default: the bundled plugins only]"""
        self["plugin-path"].append(directory)

    def opt_listen(self, endpoint):
        """Server endpoint string to listen on; repeatable. [default: tcp:8080:interface=127.0.0.1]"""  # noqa: E501
        self["listen"].append(endpoint)

    def opt_passthrough(self, pattern):
        """mitm: host glob (SNI or CONNECT host) tunnelled blind, never intercepted; repeatable."""
        self["passthrough"].append(pattern)

    def opt_upstream_ca(self, path):
        """PEM file of trust anchors for upstream TLS, added to the system store; repeatable."""
        self["upstream-ca"].append(path)

    def opt_allow(self, cidr):
        """Client network (CIDR) allowed to use the proxy; repeatable. [default: loopback only]"""  # noqa: E501
        self["allow"].append(cidr)

    def postOptions(self):
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        if self["list-plugins"]:
            self._listPlugins()
        try:
            values, sources, configFile = config.readValues(self)
            self["proxyConfig"] = config.build(values, sources, reactor, configFile)
        except config.ConfigError as e:
            raise SystemExit(f"proxyd: {e}")
        self["configValues"] = values  # what SIGHUP compares a re-read with
        for line in self["proxyConfig"].pluginWarnings:
            sys.stderr.write(f"proxyd: warning: plugin module failed to import: {line}\n")

    def _listPlugins(self):
        from proxyd.pluginload import PluginLoadError, listing

        try:
            sys.stdout.write(listing(self["plugin-path"]))
        except PluginLoadError as e:
            raise SystemExit(f"proxyd: {e}")
        sys.stdout.flush()
        raise SystemExit(0)


def makeService(options):
    """
    Assemble the checked configuration into a L{ProxyService}.
    """
    from twisted.internet import reactor

    from proxyd.accesslog import AccessLog
    from proxyd.factory import ProxyFactory
    from proxyd.service import ProxyService

    proxyConfig = options["proxyConfig"]
    accessLog = None
    if proxyConfig.accessLog is not None:
        accessLog = AccessLog.open(proxyConfig.accessLog, proxyConfig.logFormat)
    metrics = None
    if proxyConfig.metrics is not None:
        from proxyd.metrics import ProxyMetrics

        metrics = ProxyMetrics()
    factory = ProxyFactory(proxyConfig, reactor, accessLog, metrics=metrics)
    from proxyd.reconfig import Reloader

    reloader = Reloader(options, reactor, options["configValues"])
    return ProxyService(proxyConfig, factory, reactor, accessLog, reloader=reloader)
