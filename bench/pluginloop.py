#!/usr/bin/env python3
"""The plugin pipeline's cost per exchange: proxyd with no plugins against proxyd with the headers plugin.

In-process, no sockets: proxyd.testing.FakeProxy puts a ProxyFactory on a
MemoryReactorClock, the client connection and the one upstream connection
on StringTransports. One exchange is one keep-alive request/response
through proxyd's own code, as run.py's wrk drives it:

  1. the client sends `GET http://127.0.0.1:8000/small HTTP/1.1` (Host,
     User-Agent, Accept);
  2. proxyd parses it, runs the request hooks and writes it upstream (the
     pooled connection, made once before timing starts);
  3. the upstream answers 200 with Server, Content-Type, Content-Length:
     1024 and Connection: keep-alive, and a 1 KiB body;
  4. proxyd parses it, runs the response hooks and writes it to the client.

Two variants: (a) no plugins; (b) the bundled headers plugin as run.py's
proxyd-headers runs it (`--plugin headers:set-request=X-Bench:1,
set-response=X-Proxied:1`: one request and one response header set). After
one checked warm-up exchange each round times N exchanges (bounded by
--exchanges and --round-seconds); the rounds alternate the variants, so a
burst of other work on the machine falls on both alike. Printed: the median
us per exchange of each and the ratio plain/headers, which is the req/s
ratio proxyd+headers / proxyd a CPU-bound proxy would get with the CPU to
itself. Through real sockets each exchange also pays for system calls and
the reactor, the same with or without plugins, so run.py's ratio should come
out a little nearer 1 than this one.

Run it from the repository with proxyd importable: `python
bench/pluginloop.py` where proxyd is installed, or with
PYTHONPATH=REPO:DIR where DIR/proxyd_plugins is REPO's plugins/ (how
setup.cfg installs them). `--profile` adds a cProfile of variant (b);
`--calls` adds the function calls per exchange of each variant, counted by
cProfile: unlike the times, the same on a busy machine as on an idle one.
"""

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time

try:
    import proxyd
    from proxyd.pluginload import PluginLoadError, load
    from proxyd.testing import FakeProxy
except ImportError as e:  # pragma: no cover - only a usage message
    sys.exit(f"pluginloop.py needs proxyd importable ({e}): install it, or run with "
             "PYTHONPATH=REPO:DIR where DIR/proxyd_plugins links to REPO/plugins")

HEADERS_PLUGIN = "headers:set-request=X-Bench:1,set-response=X-Proxied:1"   # as run.py's proxyd-headers
ORIGIN = b"127.0.0.1:8000"
BODY = (b"proxyd bench small response body.\n" * 64)[:1023] + b"\n"     # run.py's /small

REQUEST = (
    b"GET http://" + ORIGIN + b"/small HTTP/1.1\r\n"
    b"Host: " + ORIGIN + b"\r\n"
    b"User-Agent: proxyd-pluginloop\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + BODY
)

CHUNK = 500   # exchanges between two looks at the clock


class Loop:
    """One client connection through a FakeProxy, its upstream connection made and pooled."""

    def __init__(self, name, rewriters):
        self.name = name
        self.plugins = bool(rewriters)
        self.proxy = FakeProxy(rewriters=rewriters)
        self.channel, self.client = self.proxy.client()
        self.channel.dataReceived(REQUEST)
        if self.proxy.pendingConnects() != [("127.0.0.1", 8000)]:
            raise SystemExit(f"{name}: proxyd asked for {self.proxy.pendingConnects()}, not 127.0.0.1:8000")
        self.upstream, self.upstreamTransport = self.proxy.acceptUpstream()
        self.upstream.dataReceived(RESPONSE)
        self.check()            # the warm-up exchange, which made the upstream connection
        self.checked()          # and one on the pooled connection, as every timed one is

    def checked(self):
        """One exchange, checked."""
        self.channel.dataReceived(REQUEST)
        self.upstream.dataReceived(RESPONSE)
        self.check()

    def check(self):
        """The exchange just made went as it should; then both transports are emptied."""
        sent, out = self.upstreamTransport.value(), self.client.value()
        problems = []
        if not sent.startswith(b"GET /small HTTP/1.1\r\n"):
            problems.append(f"upstream got {sent[:60]!r}")
        if (b"\r\nX-Bench: 1\r\n" in sent) != self.plugins:
            problems.append("X-Bench on the upstream request " + ("missing" if self.plugins else "unexpected"))
        if not out.startswith(b"HTTP/1.1 200 ") or not out.endswith(b"\r\n\r\n" + BODY):
            problems.append(f"the client got {len(out)} bytes: {out[:60]!r}")
        if (b"\r\nX-Proxied: 1\r\n" in out) != self.plugins:
            problems.append("X-Proxied on the response " + ("missing" if self.plugins else "unexpected"))
        if self.proxy.pendingConnects() or len(self.proxy.reactor.tcpClients) != 1:
            problems.append("a new upstream connection: the pooled one was not reused")
        if self.client.disconnecting or self.upstreamTransport.disconnecting:
            problems.append("a connection was closed")
        if problems:
            raise SystemExit(f"{self.name}: the exchange went wrong (proxyd mid-change?): " + "; ".join(problems))
        self.client.clear()
        self.upstreamTransport.clear()

    def run(self, n):
        """n exchanges, each emptying both transports as a socket write would."""
        request, response = self.channel.dataReceived, self.upstream.dataReceived
        clearClient, clearUpstream = self.client.clear, self.upstreamTransport.clear
        for _ in range(n):
            request(REQUEST)
            response(RESPONSE)
            clearClient()
            clearUpstream()

    def round(self, exchanges, seconds):
        """us per exchange over at most EXCHANGES exchanges or SECONDS (whichever ends first),
        and how many were made; then one checked exchange, not timed."""
        gc.collect()
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while done < exchanges:
            n = min(CHUNK, exchanges - done)
            self.run(n)
            done += n
            if time.perf_counter() >= deadline:
                break
        us = (time.perf_counter() - t0) / done * 1e6
        self.checked()
        return us, done


def headersRewriters():
    try:
        loaded, broken = load([HEADERS_PLUGIN])
    except (PluginLoadError, ImportError) as e:
        raise SystemExit(f"pluginloop.py: --plugin {HEADERS_PLUGIN}: {e} "
                         "(is proxyd_plugins importable? see the docstring)")
    for line in broken:
        print(f"warning: plugin module failed to import: {line}", file=sys.stderr)
    return [p.rewriter for p in loaded]


def profile(loop, exchanges, sort, top):
    prof = cProfile.Profile()
    prof.enable()
    loop.run(exchanges)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


def callsPerExchange(loop, exchanges):
    """Function calls (Python and built-in) per exchange, as cProfile counts them."""
    prof = cProfile.Profile()
    prof.enable()
    loop.run(exchanges)
    prof.disable()
    loop.checked()
    return sum(calls for _, calls, _, _, _ in pstats.Stats(prof).stats.values()) / exchanges


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="rounds per variant (median)")
    ap.add_argument("--exchanges", type=int, default=20000, help="exchanges per round, at most")
    ap.add_argument("--round-seconds", type=float, default=10.0,
                    help="a round stops after this long even if it has not made --exchanges")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 5000 exchanges")
    ap.add_argument("--profile", action="store_true",
                    help="then profile --exchanges exchanges of the headers variant (cProfile)")
    ap.add_argument("--profile-sort", default="tottime", choices=["tottime", "cumulative", "ncalls"],
                    help="order of the profile's lines")
    ap.add_argument("--profile-top", type=int, default=25, help="how many profile lines")
    ap.add_argument("--calls", action="store_true",
                    help="then count the function calls per exchange of each variant (cProfile, 1000 exchanges)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' = stdout only JSON)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.exchanges = 3, 5000
    for name, lo, hi in (("rounds", 1, 100), ("exchanges", 1, 1_000_000), ("round_seconds", 0.1, 600),
                         ("profile_top", 1, 1000)):
        if not lo <= getattr(a, name) <= hi:
            ap.error(f"--{name.replace('_', '-')} must be {lo}..{hi}")

    loops = [Loop("plain", ()), Loop("headers", headersRewriters())]
    us = {lp.name: [] for lp in loops}
    made = {lp.name: [] for lp in loops}
    for i in range(a.rounds):
        for lp in (loops if i % 2 == 0 else loops[::-1]):
            u, n = lp.round(a.exchanges, a.round_seconds)
            us[lp.name].append(u)
            made[lp.name].append(n)
    mp, mh = statistics.median(us["plain"]), statistics.median(us["headers"])
    res = {
        "python": platform.python_version(),
        "proxyd": os.path.dirname(proxyd.__file__),
        "plugin": HEADERS_PLUGIN,
        "rounds": a.rounds,
        "exchanges_per_round": made,
        "plain_us_per_exchange": {"median": round(mp, 2), "rounds": [round(x, 2) for x in us["plain"]]},
        "headers_us_per_exchange": {"median": round(mh, 2), "rounds": [round(x, 2) for x in us["headers"]]},
        "ratio_plain_over_headers": round(mp / mh, 3),
    }
    if a.calls:
        res["calls_per_exchange"] = {lp.name: round(callsPerExchange(lp, 1000), 1) for lp in loops}
    if a.json == "-":
        print(json.dumps(res))
        return 0
    fewest = min(min(v) for v in made.values())
    per = (f"{a.exchanges}" if fewest == a.exchanges
           else f"{fewest}-{a.exchanges} (--round-seconds {a.round_seconds:g} cut some short)")
    print(f"one keep-alive exchange through proxyd in-process (FakeProxy, no sockets), GET /small + 200 with "
          f"1 KiB body, Python {res['python']}, proxyd from {res['proxyd']}, "
          f"median of {a.rounds} rounds x {per} exchanges")
    print(f"  no plugins        {mp:9.2f} us/exchange")
    print(f"  headers plugin    {mh:9.2f} us/exchange  (+{mh - mp:.2f} us: {HEADERS_PLUGIN})")
    print(f"  ratio plain/headers: {mp / mh:.2f} (the req/s ratio proxyd+headers / proxyd on an unloaded "
          f"CPU; run.py's target for it: >= 0.8)")
    if a.calls:
        calls = res["calls_per_exchange"]
        print(f"  function calls per exchange (cProfile): no plugins {calls['plain']:g}, "
              f"headers plugin {calls['headers']:g}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    if a.profile:
        print(f"\ncProfile of {a.exchanges} exchanges with the headers plugin, top {a.profile_top} "
              f"by {a.profile_sort}:")
        print(profile(loops[1], a.exchanges, a.profile_sort, a.profile_top).rstrip())
        loops[1].checked()
    return 0


if __name__ == "__main__":
    sys.exit(main())
