-- wrk script used by bench/run.py.
--
--   wrk -t1 -cN -dDs -s bench/wrk-proxy.lua http://127.0.0.1:PROXY/ -- TARGET HOST
--
-- sends `GET TARGET HTTP/1.1` with `Host: HOST` on every request. Through a
-- proxy TARGET is the absolute URL of the origin (http://127.0.0.1:ORIGIN/small);
-- for the no-proxy baseline it is the origin-form path (/small). Keep-alive is
-- wrk's default (HTTP/1.1, no Connection: close).
--
-- At the end one line `BENCHJSON {...}` carries the counts run.py needs.

local req

function init(args)
   local target = args[1] or "/"
   local host = args[2] or wrk.host
   req = wrk.format("GET", target, { ["Host"] = host })
end

function request()
   return req
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p99": %d, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
