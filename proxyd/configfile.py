# -*- test-case-name: tests.unit.test_config -*-
"""
The --config TOML file: read, type-checked against L{OPTIONS}, and merged
under the command line.  The result is a plain C{{option: value}} dict;
whether each value makes sense is for L{proxyd.config.build} to say.

L{ConfigError} is defined here, the lowest layer that raises it, and
re-exported by L{proxyd.config}.
"""

import difflib
import re
import tomllib


class ConfigError(Exception):
    """
    A bad setting; C{str(err)} is one line, C{"--option: reason"}.
    """


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
    "tls-cert": _LIST,
    "tls-key": _LIST,
    "tls-min": _STR,
    "client-ca": _STR,
    "tls-key-password-file": _STR,
    "upstream": _LIST,
    "route": _LIST,
    "metrics": _STR,
    "drain-timeout": _NUMBER,
}

# Options that set one thing two ways: the command line giving either one
# replaces whatever the file said about both.
_GROUPS = (("allow-private", "deny-private"), ("proxy-auth", "proxy-auth-file"))


def asList(value):
    """A list-valued option as a list, whether one value (the command line's str) or many."""
    return [value] if isinstance(value, str) else list(value)


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
