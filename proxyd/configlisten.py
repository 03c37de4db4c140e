# -*- test-case-name: tests.unit.test_config -*-
"""
The --listen endpoint strings, checked by parsing them as twistd would,
without listening; each problem is worded about the endpoint rather than
left as what L{serverFromString} raised.
"""

import re

from twisted.internet.endpoints import serverFromString

from proxyd.policy import splitEndpoint


class EndpointError(ValueError):
    """
    A bad --listen value; its text starts with the endpoint string.
    """


def checkListen(value, reactor):
    """
    Check one endpoint string or a list of them.

    @return: the endpoint strings, as a tuple.
    @raise EndpointError: the first bad one, its text starting with the
        endpoint string.
    """
    descriptions = [value] if isinstance(value, str) else list(value)
    if not descriptions:
        raise ValueError("no endpoint given")
    for description in descriptions:
        reason = _endpointProblem(description, reactor)
        if reason:
            label = description if description.strip() else repr(description)
            raise EndpointError(f"{label}: {reason}")
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
