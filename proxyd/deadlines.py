# -*- test-case-name: tests.unit.test_channel -*-
"""
A client connection's one timer and what each state does when its
deadline passes: no complete head in time (slowloris, or a TLS handshake
that never ends), a keep-alive connection idle too long, an upstream or
a tunnel silent too long, a CONNECT whose client says nothing usable.

One timer per connection, reset lazily: activity only moves the
deadline, and the timer, when it fires, works out whether the deadline
really passed.  L{proxyd.channel.ProxyChannel} mixes this in (as Twisted's
own protocols mix in C{TimeoutMixin}); it reads the channel's state.
"""

from proxyd.exchange import HttpExchange

# What a connection is doing, for its deadline.
HEAD, BUSY, IDLE, TUNNEL, CLOSING, SNIFF, INTERCEPTED = range(7)


class Deadlines:
    """The timer half of L{proxyd.channel.ProxyChannel}."""

    def _setDeadline(self, state, deadline):
        self.state = state
        self.deadline = deadline
        timer = self._timer
        if timer is None:
            self._timer = self.clock.callLater(max(deadline - self.clock.seconds(), 0), self._timerFired)
        elif timer.getTime() > deadline:
            timer.reset(max(deadline - self.clock.seconds(), 0))

    def _timerFired(self):
        self._timer = None
        now = self.clock.seconds()
        state = self.state
        deadline = self.deadline
        if state == BUSY:
            last = self.lastActivity
            upstream = getattr(self.exchange, "upstream", None)
            if upstream is not None and upstream.lastActivity > last:
                last = upstream.lastActivity
            deadline = max(deadline, last + self.config.idleTimeout)
        elif state == TUNNEL and self.relay is not None:
            deadline = self.relay.lastActivity + self.config.idleTimeout
        elif state == INTERCEPTED or (state == SNIFF and self.interception is not None and self.interception.waiting):
            return  # the inner channel keeps its own time (or a leaf is being made)
        if now < deadline:
            self._timer = self.clock.callLater(deadline - now, self._timerFired)
            return
        self._timedOut(state)

    def _timedOut(self, state):
        if state == HEAD and self.overTLS and not self.tlsEstablished:
            # A TLS shutdown cannot happen mid-handshake: abort.
            self._log.info(
                "Client {client} did not finish the TLS handshake{name} within {t:g}s; closing",
                client=self.client,
                name=" for " + self.origin[0] if self.origin is not None else "",
                t=self.config.headerTimeout,
            )
            self.tlsEstablished = True  # logged once; connectionLost need not log again
            self.factory.metrics.handshakeFailed("client", "timeout")
            self.state = CLOSING
            self.transport.abortConnection()
            return
        if state == HEAD:
            self._log.info("Client {client} sent no complete request head within {t:g}s; closing", client=self.client, t=self.config.headerTimeout)
            if self.reader.headBytes or self.reader.events:
                self.sendError(408, "request head not received within {:g}s".format(self.config.headerTimeout), None)
            else:
                self._close()
        elif state == IDLE:
            self._close()
        elif state == BUSY:
            exchange = self.exchange
            self._log.info("Upstream idle for {t:g}s during {target}", t=self.config.idleTimeout, target=self._targetOf(exchange))
            if isinstance(exchange, HttpExchange):
                exchange.fail(504, "upstream {}:{} did not answer within {:g}s".format(exchange.host, exchange.port, self.config.idleTimeout))
            else:
                self._close()
        elif state == SNIFF:
            self._log.info("Client {client} sent nothing usable within {t:g}s after CONNECT; closing", client=self.client, t=self.config.headerTimeout)
            if self.interception is not None:
                self.interception.abandon()
            self.transport.loseConnection()
        elif state == TUNNEL:
            self._log.info("Tunnel {target} idle for {t:g}s; closing", target=self._targetOf(self.exchange), t=self.config.idleTimeout)
            if self.relay is not None:
                self.relay.abort()
        else:
            self.transport.abortConnection() if self._pauses else self.transport.loseConnection()
