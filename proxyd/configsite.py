# -*- test-case-name: tests.unit.test_configsite -*-
"""
The options of the site proxyd serves itself: the TLS listener
(--tls-cert/--tls-key pairs, --tls-min, --client-ca,
--tls-key-password-file), which every mode may use, and reverse mode's
backends (--upstream, --route).

Checked at start like every option: a certificate that does not load is
one line naming its file, before anything listens.
"""

from proxyd.backends import parseBackend, parseRoute
from proxyd.configfile import ConfigError, asList

TLS_OPTIONS = ("tls-cert", "tls-key", "tls-min", "client-ca", "tls-key-password-file")


def siteFields(values, mode, check):
    """
    The L{proxyd.config.ProxyConfig} fields for these options.

    @param check: C{check(name, checker)} from L{proxyd.config.build}, which
        turns a checker's ValueError into a one-line ConfigError naming the
        option (and the config file when the value came from there).
    """
    fields = {}
    certs = asList(values.get("tls-cert", []))
    keys = asList(values.get("tls-key", []))
    if len(certs) != len(keys):
        raise ConfigError(
            f"--tls-cert: give --tls-cert and --tls-key in pairs ({len(certs)} certificates, {len(keys)} keys)"
        )
    if certs:
        fields["serverTLS"] = _serverTLS(values, list(zip(certs, keys)))
        fields["tlsMin"] = str(values.get("tls-min", "1.2"))
        fields["clientCA"] = values.get("client-ca")
    else:
        for name in ("tls-min", "client-ca", "tls-key-password-file"):
            if name in values:
                raise ConfigError(f"--{name}: needs --tls-cert and --tls-key (the listener's certificate)")
        if mode == "reverse":
            raise ConfigError("--tls-cert: reverse mode needs --tls-cert FILE --tls-key FILE (the site's certificate)")
    if mode == "reverse":
        if "upstream" not in values:
            raise ConfigError("--upstream: reverse mode needs at least one backend, e.g. --upstream http://127.0.0.1:8000")
        fields["upstreams"] = check("upstream", lambda v: tuple(parseBackend(u) for u in asList(v)))
        if "route" in values:
            fields["routes"] = check("route", lambda v: tuple(parseRoute(r) for r in asList(v)))
    else:
        for name in ("upstream", "route"):
            if name in values:
                raise ConfigError(f"--{name}: only in --mode=reverse (this is {mode})")
    return fields


def _serverTLS(values, pairs):
    from proxyd.tlsserver import ServerTLS, TLSConfigError

    try:
        return ServerTLS.fromFiles(
            pairs,
            tlsMin=str(values.get("tls-min", "1.2")),
            clientCA=values.get("client-ca"),
            passwordFile=values.get("tls-key-password-file"),
        )
    except TLSConfigError as e:
        raise ConfigError(str(e))
