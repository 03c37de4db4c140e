# -*- test-case-name: tests.unit.test_config -*-
"""
The command line and the --config TOML file, merged and checked once at
start-up into a frozen L{ProxyConfig}.

Every problem is a L{ConfigError} whose text is one line naming the option,
so that start-up can print it as is and exit.

This module is the entry point (L{fromOptions}) and the values half: each
option's value checked and converted, then the L{ProxyConfig} built.  The
file half (reading the TOML, its types, the merge) is L{proxyd.configfile},
and the --listen endpoint checks are L{proxyd.configlisten}; the names
callers use from those are re-exported here.
"""

import math
from ipaddress import ip_network
from typing import TYPE_CHECKING

import attr

from proxyd.configfile import OPTIONS, ConfigError, asList, merge, readFile
from proxyd.configlisten import EndpointError, checkListen
from proxyd.configsite import siteFields
from proxyd.policy import (
    AddressPolicy,
    PortSet,
    ProxyAuth,
    listenersAreLoopbackOnly,
)

if TYPE_CHECKING:  # proxyd.ca is imported only when mode is mitm
    from proxyd.ca import CertificateAuthority

__all__ = [
    "MODES", "DEFAULT_LISTEN", "MAX_HEADER_SIZE", "MIN_HEADER_SIZE",
    "ConfigError", "ProxyConfig", "OPTIONS", "fromOptions", "readFile", "merge", "build",
]

MODES = ("forward", "mitm", "reverse")
DEFAULT_LISTEN = {
    "forward": "tcp:8080:interface=127.0.0.1",
    "mitm": "tcp:8080:interface=127.0.0.1",
    "reverse": "tcp:8443:interface=127.0.0.1",
}
MAX_HEADER_SIZE = 1024 * 1024
MIN_HEADER_SIZE = 1024


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class ProxyConfig:
    """
    The settings the daemon runs with, every value already checked.
    """

    mode: str = "forward"
    listen: tuple = (DEFAULT_LISTEN["forward"],)
    allow: tuple = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    proxyAuth: "ProxyAuth | None" = None
    connectPorts: PortSet = PortSet.parse("443")
    addressPolicy: AddressPolicy = attr.ib()
    accessLog: "str | None" = None
    logFormat: str = "text"
    connectTimeout: float = 10.0
    idleTimeout: float = 300.0
    headerTimeout: float = 30.0
    maxConnections: int = 10000
    maxHeaderSize: int = 65536
    configFile: "str | None" = None
    # mitm
    ca: "CertificateAuthority | None" = None
    leafKey: str = "ecdsa"
    passthrough: tuple = ()
    upstreamCA: tuple = ()
    upstreamInsecure: bool = False
    trustRoot: object = None
    # plugins
    plugins: tuple = ()  # LoadedPlugin, in --plugin order
    pluginPaths: tuple = ()
    pluginWarnings: tuple = ()  # one line per plugin module that failed to import
    maxBodyBuffer: int = 10 * 1024 * 1024
    pluginTimeout: float = 30.0
    # the listener's own TLS (every mode) and reverse mode's backends
    serverTLS: object = None  # proxyd.tlsserver.ServerTLS
    tlsMin: str = "1.2"
    clientCA: "str | None" = None
    upstreams: tuple = ()  # proxyd.backends.Backend, round robin
    routes: tuple = ()  # (host glob, Backend), in --route order
    metrics: "str | None" = None  # endpoint of the Prometheus listener
    drainTimeout: float = 30.0

    @addressPolicy.default
    def _defaultAddressPolicy(self):
        # SPEC: private upstreams are fine while nobody else can reach us.
        return AddressPolicy(
            allowPrivate=listenersAreLoopbackOnly(self.listen), allowLinkLocal=False
        )


def fromOptions(options, reactor):
    """
    Build the L{ProxyConfig} from parsed command-line options (a mapping
    using the option names; L{None}, C{[]} or false for "not given") and
    the file named by C{options["config"]}.

    @param reactor: used to parse endpoint strings (nothing listens) and
        given to L{ProxyAuth} for its thread pool.
    @raise ConfigError: anything wrong, as one line.
    """
    values, sources, configFile = readValues(options)
    return build(values, sources, reactor, configFile)


def readValues(options):
    """
    The command line over the file, as C{(values, sources, configFile)}:
    what L{build} takes.  Read again on C{SIGHUP} (L{proxyd.reconfig}).
    """
    cli = {name: options.get(name) for name in OPTIONS if options.get(name)}
    configFile = options.get("config")
    fromFile = readFile(configFile) if configFile else {}
    values = merge(fromFile, cli)
    sources = {name: configFile for name in fromFile if name not in cli}
    return values, sources, configFile


def build(values, sources, reactor, configFile=None, previous=None):
    """
    Check every value and make the L{ProxyConfig}.

    @param sources: C{{option: config file}} for values that came from the
        file, so a message can say where to look.
    @param previous: on a reload, the running L{ProxyConfig}: its mitm CA
        is kept rather than read again (it cannot change without a restart,
        and its directory may no longer be readable after a privilege drop).
    """

    def check(name, checker, *args):
        try:
            return checker(values[name], *args)
        except ValueError as e:
            where = f" (in {sources[name]})" if name in sources else ""
            # "--listen tcp:x: why" names the endpoint the way twistd would.
            sep = " " if isinstance(e, EndpointError) else ": "
            raise ConfigError(f"--{name}{sep}{e}{where}")

    fields = {"configFile": configFile}
    mode = fields["mode"] = check("mode", _mode) if "mode" in values else "forward"
    if "listen" in values:
        listen = fields["listen"] = check("listen", checkListen, reactor)
    else:
        listen = fields["listen"] = (DEFAULT_LISTEN[mode],)
    if "allow" in values:
        fields["allow"] = check("allow", _allow)
    if "proxy-auth" in values and "proxy-auth-file" in values:
        raise ConfigError("--proxy-auth: give --proxy-auth or --proxy-auth-file, not both")
    if "proxy-auth" in values:
        fields["proxyAuth"] = check("proxy-auth", _authPair, reactor)
    if "proxy-auth-file" in values:
        fields["proxyAuth"] = check("proxy-auth-file", _authFile, reactor)
    if "connect-ports" in values:
        fields["connectPorts"] = check("connect-ports", _ports)
    fields["addressPolicy"] = _addressPolicy(values, listen)
    if "access-log" in values:
        # On a reload the log is already open (and after --uid the run user
        # may not be able to open it again): its path needs a restart.
        fields["accessLog"] = values["access-log"] if previous is not None else check("access-log", _accessLog)
    if "log-format" in values:
        fields["logFormat"] = check("log-format", _choice, ("text", "json"))
    for name, field in (
        ("connect-timeout", "connectTimeout"),
        ("idle-timeout", "idleTimeout"),
        ("header-timeout", "headerTimeout"),
        ("drain-timeout", "drainTimeout"),
    ):
        if name in values:
            fields[field] = check(name, _seconds)
    if "max-connections" in values:
        fields["maxConnections"] = check("max-connections", _integer, 1, None)
    if "max-header-size" in values:
        fields["maxHeaderSize"] = check(
            "max-header-size", _integer, MIN_HEADER_SIZE, MAX_HEADER_SIZE
        )
    if "passthrough" in values:
        fields["passthrough"] = check("passthrough", _globs)
    if "upstream-ca" in values:
        fields["upstreamCA"] = tuple(asList(values["upstream-ca"]))
    fields["upstreamInsecure"] = bool(values.get("upstream-insecure"))
    if "upstream-ca" in values and not fields["upstreamInsecure"]:
        # Without --upstream-ca, trustRoot stays None: the platform's store.
        fields["trustRoot"] = check("upstream-ca", _trustRoot)
    fields.update(siteFields(values, mode, check))
    if "metrics" in values:
        fields["metrics"] = check("metrics", lambda v: checkListen([v], reactor)[0])
    if "leaf-key" in values:
        fields["leafKey"] = check("leaf-key", _choice, ("ecdsa", "rsa"))
    if ("ca-cert" in values) != ("ca-key" in values):
        raise ConfigError("--ca-cert: give --ca-cert and --ca-key together")
    if mode == "mitm":
        fields["ca"] = previous.ca if previous is not None and previous.ca is not None else _loadCA(values)
    if "max-body-buffer" in values:
        fields["maxBodyBuffer"] = check("max-body-buffer", _size)
    if "plugin-timeout" in values:
        fields["pluginTimeout"] = check("plugin-timeout", _seconds)
    if "plugin-path" in values:
        fields["pluginPaths"] = check("plugin-path", _directories)
    if values.get("plugin"):
        fields["plugins"], fields["pluginWarnings"] = _loadPlugins(
            asList(values["plugin"]), fields.get("pluginPaths", ())
        )
    return ProxyConfig(**fields)


def _loadPlugins(specs, paths):
    from proxyd.pluginload import PluginLoadError, load

    try:
        plugins, warnings = load(specs, paths)
    except PluginLoadError as e:
        raise ConfigError(str(e))
    return plugins, tuple(warnings)


def _directories(value):
    import os

    paths = []
    for path in asList(value):
        if not os.path.isdir(path):
            raise ValueError(f"{path}: not a directory")
        paths.append(os.path.abspath(path))
    return tuple(paths)


def _size(value):
    from proxyd.pluginsettings import parseSize

    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be at least 0, got {value}")
        return value
    return parseSize(value)


def _globs(value):
    patterns = []
    for pattern in asList(value):
        pattern = pattern.strip().lower().rstrip(".")
        if not pattern or any(c in pattern for c in "/ :"):
            raise ValueError(f"{pattern!r} is not a host glob like *.example.com")
        patterns.append(pattern)
    return tuple(patterns)


def _trustRoot(files):
    from proxyd.tlsconfig import upstreamTrust

    return upstreamTrust(tuple(asList(files)))


def _loadCA(values):
    from proxyd.ca import CAError, CertificateAuthority

    try:
        if "ca-cert" in values:
            return CertificateAuthority.fromFiles(values["ca-cert"], values["ca-key"])
        return CertificateAuthority.inDirectory(values.get("ca-dir"))
    except CAError as e:
        option = "--ca-cert" if "ca-cert" in values else "--ca-dir"
        raise ConfigError(f"{option}: {e}")


def _addressPolicy(values, listen):
    allowPrivate = bool(values.get("allow-private"))
    denyPrivate = bool(values.get("deny-private"))
    if allowPrivate and denyPrivate:
        raise ConfigError("--allow-private: cannot be combined with --deny-private")
    if allowPrivate:
        return AddressPolicy(allowPrivate=True, allowLinkLocal=True)
    if denyPrivate:
        return AddressPolicy(allowPrivate=False, allowLinkLocal=False)
    return AddressPolicy(
        allowPrivate=listenersAreLoopbackOnly(listen), allowLinkLocal=False
    )


# Checkers: take the command-line string or the TOML value, return the
# converted value or raise ValueError with the reason.


def _mode(value):
    if value not in MODES:
        raise ValueError(f"expected forward, mitm or reverse, got {value!r}")
    return value


def _choice(value, choices):
    if value not in choices:
        raise ValueError(f"expected {' or '.join(choices)}, got {value!r}")
    return value


def _allow(value):
    networks = []
    items = asList(value)
    if not items:
        raise ValueError("empty list: no client could use the proxy")
    for item in items:
        try:
            networks.append(ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (CIDR)")
    return tuple(networks)


def _ports(value):
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    return PortSet.parse(str(value))


def _authPair(value, reactor):
    return ProxyAuth.fromPair(value, reactor)


def _authFile(value, reactor):
    try:
        return ProxyAuth.fromFile(value, reactor)
    except OSError as e:
        raise ValueError(f"cannot read {value}: {e.strerror or e}")
    except ValueError as e:
        raise ValueError(f"{value}: {e}")


def _accessLog(value):
    if value == "-":
        return value
    if not value:
        raise ValueError("empty path (use - for standard output)")
    try:
        open(value, "a").close()
    except OSError as e:
        raise ValueError(f"cannot open {value}: {e.strerror or e}")
    return value


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a number of seconds above 0, got {value!r}")
    return seconds


def _integer(value, low, high):
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number, got {value!r}")
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"must be {bound}, got {value!r}")
    return number
