# -*- test-case-name: tests.unit.test_config -*-
"""
The command line and the --config TOML file, merged and checked once at
start-up into a frozen L{ProxyConfig}.

Every problem is a L{ConfigError} whose text is one line naming the option,
so that start-up can print it as is and exit.
"""

import difflib
import math
import re
import tomllib
from ipaddress import ip_network

import attr
from twisted.internet.endpoints import serverFromString

from proxyd.policy import (
    AddressPolicy,
    PortSet,
    ProxyAuth,
    listenersAreLoopbackOnly,
    splitEndpoint,
)

MODES = ("forward", "mitm", "reverse")
IMPLEMENTED_MODES = ("forward", "mitm")
DEFAULT_LISTEN = {
    "forward": "tcp:8080:interface=127.0.0.1",
    "mitm": "tcp:8080:interface=127.0.0.1",
    "reverse": "tcp:8443:interface=127.0.0.1",
}
MAX_HEADER_SIZE = 1024 * 1024
MIN_HEADER_SIZE = 1024


class ConfigError(Exception):
    """
    A bad setting; C{str(err)} is one line, C{"--option: reason"}.
    """


class _EndpointError(ValueError):
    """
    A bad --listen value; its text starts with the endpoint string.
    """


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

    @addressPolicy.default
    def _defaultAddressPolicy(self):
        # SPEC: private upstreams are fine while nobody else can reach us.
        return AddressPolicy(
            allowPrivate=listenersAreLoopbackOnly(self.listen), allowLinkLocal=False
        )


# Option name -> the TOML types accepted for it.
_STR, _LIST, _BOOL, _NUMBER, _INT, _PORTS, _SIZE = (
    "a string",
    "a list of strings",
    "true or false",
    "a number",
    "an integer",
    "a string like \"443,8443\"",
    "a number of bytes or a string like \"10MiB\"",
)
OPTIONS = {
    "mode": _STR,
    "listen": _LIST,
    "allow": _LIST,
    "proxy-auth": _STR,
    "proxy-auth-file": _STR,
    "connect-ports": _PORTS,
    "allow-private": _BOOL,
    "deny-private": _BOOL,
    "access-log": _STR,
    "log-format": _STR,
    "connect-timeout": _NUMBER,
    "idle-timeout": _NUMBER,
    "header-timeout": _NUMBER,
    "max-connections": _INT,
    "max-header-size": _INT,
    "ca-dir": _STR,
    "ca-cert": _STR,
    "ca-key": _STR,
    "leaf-key": _STR,
    "passthrough": _LIST,
    "upstream-ca": _LIST,
    "upstream-insecure": _BOOL,
    "plugin": _LIST,
    "plugin-path": _LIST,
    "max-body-buffer": _SIZE,
    "plugin-timeout": _NUMBER,
}

# Options that set one thing two ways: the command line giving either one
# replaces whatever the file said about both.
_GROUPS = (("allow-private", "deny-private"), ("proxy-auth", "proxy-auth-file"))


def fromOptions(options, reactor):
    """
    Build the L{ProxyConfig} from parsed command-line options (a mapping
    using the option names; L{None}, C{[]} or false for "not given") and
    the file named by C{options["config"]}.

    @param reactor: used to parse endpoint strings (nothing listens) and
        given to L{ProxyAuth} for its thread pool.
    @raise ConfigError: anything wrong, as one line.
    """
    cli = {name: options.get(name) for name in OPTIONS if options.get(name)}
    configFile = options.get("config")
    fromFile = readFile(configFile) if configFile else {}
    values = merge(fromFile, cli)
    sources = {name: configFile for name in fromFile if name not in cli}
    return build(values, sources, reactor, configFile)


def readFile(path):
    """
    Read and type-check a TOML config file.

    @return: C{{option: value}}, values as TOML gave them.
    @raise ConfigError: unreadable, not TOML, unknown keys or wrong types.
    """
    where = f"--config {path}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{where}: {e.strerror or e}")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid UTF-8 text")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: {_tomlReason(str(e))}")
    for name, value in data.items():
        if name == "config":
            raise ConfigError(f"{where}: 'config' cannot be set inside a config file")
        if name not in OPTIONS:
            raise ConfigError(f"{where}: unknown option {name!r}{_didYouMean(name)}")
        if not _typeOk(OPTIONS[name], value):
            raise ConfigError(
                f"{where}: {name} must be {OPTIONS[name]}, not {_tomlType(value)}"
            )
    return data


def merge(fromFile, cli):
    """
    The command line wins per option; a repeated option's list from the
    command line replaces the file's.
    """
    values = dict(fromFile)
    for group in _GROUPS:
        if any(name in cli for name in group):
            for name in group:
                values.pop(name, None)
    values.update(cli)
    return values


def build(values, sources, reactor, configFile=None):
    """
    Check every value and make the L{ProxyConfig}.

    @param sources: C{{option: config file}} for values that came from the
        file, so a message can say where to look.
    """

    def check(name, checker, *args):
        try:
            return checker(values[name], *args)
        except ValueError as e:
            where = f" (in {sources[name]})" if name in sources else ""
            # "--listen tcp:x: why" names the endpoint the way twistd would.
            sep = " " if isinstance(e, _EndpointError) else ": "
            raise ConfigError(f"--{name}{sep}{e}{where}")

    fields = {"configFile": configFile}
    mode = fields["mode"] = check("mode", _mode) if "mode" in values else "forward"
    if "listen" in values:
        listen = fields["listen"] = check("listen", _listen, reactor)
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
        fields["accessLog"] = check("access-log", _accessLog)
    if "log-format" in values:
        fields["logFormat"] = check("log-format", _choice, ("text", "json"))
    for name, field in (
        ("connect-timeout", "connectTimeout"),
        ("idle-timeout", "idleTimeout"),
        ("header-timeout", "headerTimeout"),
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
        fields["upstreamCA"] = tuple(_asList(values["upstream-ca"]))
    fields["upstreamInsecure"] = bool(values.get("upstream-insecure"))
    if "upstream-ca" in values and not fields["upstreamInsecure"]:
        # Without --upstream-ca, trustRoot stays None: the platform's store.
        fields["trustRoot"] = check("upstream-ca", _trustRoot)
    if "leaf-key" in values:
        fields["leafKey"] = check("leaf-key", _choice, ("ecdsa", "rsa"))
    if ("ca-cert" in values) != ("ca-key" in values):
        raise ConfigError("--ca-cert: give --ca-cert and --ca-key together")
    if mode == "mitm":
        fields["ca"] = _loadCA(values)
    if "max-body-buffer" in values:
        fields["maxBodyBuffer"] = check("max-body-buffer", _size)
    if "plugin-timeout" in values:
        fields["pluginTimeout"] = check("plugin-timeout", _seconds)
    if "plugin-path" in values:
        fields["pluginPaths"] = check("plugin-path", _directories)
    if values.get("plugin"):
        fields["plugins"], fields["pluginWarnings"] = _loadPlugins(
            _asList(values["plugin"]), fields.get("pluginPaths", ())
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
    for path in _asList(value):
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
    for pattern in _asList(value):
        pattern = pattern.strip().lower().rstrip(".")
        if not pattern or any(c in pattern for c in "/ :"):
            raise ValueError(f"{pattern!r} is not a host glob like *.example.com")
        patterns.append(pattern)
    return tuple(patterns)


def _trustRoot(files):
    from proxyd.tlsconfig import upstreamTrust

    return upstreamTrust(tuple(_asList(files)))


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
    if value not in IMPLEMENTED_MODES:
        raise ValueError(
            f"{value!r} is not available yet in this version (only 'forward' and 'mitm')"
        )
    return value


def _choice(value, choices):
    if value not in choices:
        raise ValueError(f"expected {' or '.join(choices)}, got {value!r}")
    return value


def _asList(value):
    return [value] if isinstance(value, str) else list(value)


def _listen(value, reactor):
    descriptions = _asList(value)
    if not descriptions:
        raise ValueError("no endpoint given")
    for description in descriptions:
        reason = _endpointProblem(description, reactor)
        if reason:
            label = description if description.strip() else repr(description)
            raise _EndpointError(f"{label}: {reason}")
    return tuple(descriptions)


def _endpointProblem(description, reactor):
    """
    @return: why C{description} is not a usable server endpoint, or L{None}.
    """
    if not description.strip():
        return "empty endpoint (expected e.g. tcp:8080:interface=127.0.0.1)"
    args, kwargs = splitEndpoint(description)
    while args[0].lower() == "haproxy" and len(args) > 1:
        args = args[1:]
    kind = args[0].lower()
    if kind in ("tcp", "tcp6", "ssl"):
        port = args[1] if len(args) > 1 else kwargs.get("port", "")
        if not (port.isascii() and port.isdigit()):
            return f"{port!r} is not a port number"
        if int(port) > 65535:
            return f"port {port} is out of range 0-65535"
    path = args[1] if len(args) > 1 else kwargs.get("address", "")
    if kind == "unix" and not path:
        return "a unix endpoint needs a path (unix:/run/proxyd.sock)"
    try:
        serverFromString(reactor, description)
    except Exception as e:
        return _endpointReason(kind, e)
    return None


def _endpointReason(kind, e):
    """
    Turn what serverFromString raised into words about the endpoint.
    """
    text = str(e)
    if kind == "systemd" and isinstance(e, (IndexError, KeyError)):
        return "systemd passed no such socket (is a .socket unit active?)"
    match = re.search(r"unexpected keyword argument '([^']*)'", text)
    if match:
        return f"unknown parameter {match.group(1)!r}"
    match = re.match(r"invalid literal for int\(\) with base \d+: (.*)", text)
    if match:
        return f"{match.group(1)} is not a number"
    if text.startswith("Unknown endpoint type"):
        return f"unknown endpoint type {kind!r}"
    return re.sub(r"^\w+\(\) ", "", text) or type(e).__name__


def _allow(value):
    networks = []
    items = _asList(value)
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


def _typeOk(expected, value):
    if expected == _STR:
        return isinstance(value, str)
    if expected == _LIST:
        return isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _SIZE:
        return isinstance(value, (str, int)) and not isinstance(value, bool)
    # _PORTS
    ok = (str, int)
    if isinstance(value, list):
        return all(isinstance(v, ok) and not isinstance(v, bool) for v in value)
    return isinstance(value, ok) and not isinstance(value, bool)


def _tomlType(value):
    for kind, name in (
        (bool, "a boolean"),
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, kind):
            return name
    return "a date/time"


def _tomlReason(message):
    """
    tomllib says C{"Invalid value (at line 3, column 8)"}; we say
    C{"line 3: invalid value"}.
    """
    match = re.match(r"(.*) \(at line (\d+), column \d+\)$", message)
    if match:
        reason, line = match.groups()
        return f"line {line}: {reason[:1].lower()}{reason[1:]}"
    match = re.match(r"(.*) \(at end of document\)$", message)
    if match:
        reason = match.group(1)
        return f"at end of file: {reason[:1].lower()}{reason[1:]}"
    return message


def _didYouMean(name):
    close = difflib.get_close_matches(name.replace("_", "-"), OPTIONS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
