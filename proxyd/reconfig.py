# -*- test-case-name: tests.unit.test_reconfig -*-
"""
SIGHUP: the command line and the --config file read again, checked whole,
and only then applied (SPEC: "each applied only if all of it is valid;
otherwise the old state stays and one line says why").

What can change under a running daemon: the policy (--allow, proxy auth
and its file, --connect-ports, private addresses, --passthrough), plugins
and their settings, the listener's certificates, reverse mode's backends
and routes, timeouts and size limits.  What is bound or opened at start-up
(the listeners, the mode, the metrics listener, the access log's path and
format, the mitm CA) needs a restart: a change there is reported in one
line and the running value kept, like HAProxy's "requires a restart".
"""

import attr

from proxyd.config import build, readValues
from proxyd.configfile import ConfigError

__all__ = ["RESTART_ONLY", "Reloader", "ConfigError", "keepRunning", "adoptListenerTLS"]

RESTART_ONLY = (
    "mode",
    "listen",
    "metrics",
    "access-log",
    "log-format",
    "ca-dir",
    "ca-cert",
    "ca-key",
    "leaf-key",
)


@attr.s(frozen=True, auto_attribs=True)
class Reload:
    """
    A checked new configuration, not yet applied.

    @ivar config: the L{proxyd.config.ProxyConfig} to run with.
    @ivar restartOnly: option names that changed but keep their running
        value until a restart.
    @ivar values: the option values C{config} was built from.
    """

    config: object
    restartOnly: tuple
    values: dict


class Reloader:
    """
    Re-reads what L{proxyd.config.fromOptions} read at start-up: the same
    command line (which still wins) over the file as it is now.
    """

    def __init__(self, options, reactor, running):
        """
        @param options: the parsed command line, as given to
            L{proxyd.config.readValues} at start-up.
        @param running: the values the running config was built from.
        """
        self._options = options
        self._reactor = reactor
        self._running = running

    @property
    def configFile(self):
        return self._options.get("config")

    def read(self, current):
        """
        Read and check everything again.

        @param current: the running L{proxyd.config.ProxyConfig}.
        @return: a L{Reload}.
        @raise ConfigError: one line naming the option, and the file when
            the value came from it; nothing has been changed.
        """
        values, sources, configFile = readValues(self._options)

        def keepRunningValue(name):
            if name in self._running:
                values[name] = self._running[name]
            else:
                values.pop(name, None)
            sources.pop(name, None)

        restartOnly = [name for name in RESTART_ONLY if values.get(name) != self._running.get(name)]
        if bool(values.get("tls-cert")) != (current.serverTLS is not None):
            # Turning TLS on or off re-wraps the listeners: a restart.
            restartOnly += ["tls-cert", "tls-key"]
        for name in restartOnly:
            keepRunningValue(name)
        config = build(values, sources, self._reactor, configFile, previous=current)
        return Reload(config, tuple(name for name in restartOnly if name != "tls-key"), values)

    def applied(self, reload):
        """C{reload} (from L{read}) is now running: later reads compare with it."""
        self._running = reload.values


def keepRunning(current, config):
    """
    The new config with the running rewriter of every plugin whose name and
    settings did not change (a har recorder keeps its open file rather than
    starting it afresh): only changed plugins are made anew.
    """
    running = list(current.plugins)
    plugins = []
    for plugin in config.plugins:
        if plugin in running:
            plugin = running.pop(running.index(plugin))
        plugins.append(plugin)
    return attr.evolve(config, plugins=tuple(plugins))


def adoptListenerTLS(current, config):
    """
    The last step of a reload: the listener's L{proxyd.tlsserver.ServerTLS}
    (wrapped into every port) takes the new certificates, and stays the one
    the config names.
    """
    if current.serverTLS is None or config.serverTLS is None:
        return config
    current.serverTLS.adopt(config.serverTLS)
    return attr.evolve(config, serverTLS=current.serverTLS)
