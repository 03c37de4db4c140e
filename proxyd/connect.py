# -*- test-case-name: tests.unit.test_connect -*-
"""
Opening upstream TCP connections: resolve the name, check every resolved
address against the address policy, then connect to a checked address (never
re-resolving, so DNS rebinding cannot slip past the check), all within the
connect timeout.  Failures come out as L{ProxyError} with the status the
client should see.
"""

import ipaddress

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from proxyd.errors import ProxyError


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses of one resolution."""

    def __init__(self):
        self.addresses = []
        self.deferred = defer.Deferred()

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self):
        self.deferred.callback(self.addresses)


def _isLiteral(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class UpstreamConnector:
    """
    Connects to upstreams on behalf of proxied requests and tunnels.

    @param addressPolicy: has C{deniedReason(ip) -> str | None}.
    """

    _log = Logger()

    def __init__(self, reactor, addressPolicy, connectTimeout, metrics=None):
        from proxyd.metrics import NullMetrics

        self.metrics = metrics if metrics is not None else NullMetrics()
        self.reactor = reactor
        self.addressPolicy = addressPolicy
        self.connectTimeout = connectTimeout

    def resolve(self, host):
        """Deferred list of IP strings for C{host}."""
        literal = _isLiteral(host)
        if literal is not None:
            return defer.succeed([str(literal)])
        receiver = _Addresses()
        self.reactor.nameResolver.resolveHostName(receiver, host, 0)
        return receiver.deferred

    def connect(self, host, port, factory):
        """
        Connect C{factory}'s protocol to C{host}:C{port}.

        @return: Deferred firing with the connected protocol, or failing with
            L{ProxyError}: 403 by address policy, 502 unresolvable or
            refused, 504 timed out.
        """
        start = self.reactor.seconds()
        timeout = self.connectTimeout
        d = self.resolve(host)
        d.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda result, t: _resolveTimedOut(host, t))

        def resolved(addresses):
            if not addresses:
                raise ProxyError(502, "cannot resolve host {!r}".format(host))
            for ip in addresses:
                why = self.addressPolicy.deniedReason(ip)
                if why is not None:
                    if ip == host:
                        raise ProxyError(403, "upstream {}: {}".format(host, why))
                    raise ProxyError(403, "upstream {} resolves to {}: {}".format(host, ip, why))
            return self._tryAddresses(host, port, addresses, factory, start)

        return d.addCallback(resolved).addErrback(self._resolveFailed, host)

    def _resolveFailed(self, failure, host):
        if failure.check(ProxyError):
            return failure
        if failure.check(error.DNSLookupError):
            raise ProxyError(502, "cannot resolve host {!r}".format(host))
        return failure

    def _tryAddresses(self, host, port, addresses, factory, start):
        remaining = self.connectTimeout - (self.reactor.seconds() - start)
        ip = addresses[0]
        if ":" in ip:
            endpoint = TCP6ClientEndpoint(self.reactor, ip, port, timeout=max(remaining, 0.001))
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, ip, port, timeout=max(remaining, 0.001))
        d = endpoint.connect(factory)

        def connected(protocol):
            self.metrics.upstreamConnected(self.reactor.seconds() - start)
            return protocol

        def failed(failure):
            if failure.check(defer.CancelledError, error.ConnectingCancelledError):
                return failure
            if len(addresses) > 1 and not failure.check(error.TimeoutError):
                return self._tryAddresses(host, port, addresses[1:], factory, start)
            raise _connectError(failure, host, ip, port, self.connectTimeout)

        return d.addCallbacks(connected, failed)


def _resolveTimedOut(host, timeout):
    raise ProxyError(504, "timed out resolving {!r} after {:g}s".format(host, timeout))


def formatAddress(ip, port):
    return "[{}]:{}".format(ip, port) if ":" in ip else "{}:{}".format(ip, port)


def _connectError(failure, host, ip, port, timeout):
    where = formatAddress(ip, port)
    if host != ip:
        where = "{} ({})".format(formatAddress(host, port), where)
    if failure.check(error.TimeoutError, defer.CancelledError):
        return ProxyError(504, "timed out connecting to {} after {:g}s".format(where, timeout))
    if failure.check(error.ConnectionRefusedError):
        return ProxyError(502, "connection refused by {}".format(where))
    if failure.check(error.NoRouteError):
        return ProxyError(502, "no route to {}".format(where))
    if failure.check(ProxyError):
        return failure.value
    detail = failure.getErrorMessage() or failure.type.__name__
    return ProxyError(502, "cannot connect to {}: {}".format(where, detail))
