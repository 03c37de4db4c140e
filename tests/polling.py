"""
Bounded polling for tests that watch something happen in another process
or thread.  L{waitFor} is the one place the tests sleep between looks;
everything that waits (for a port, a log line, a process, an observation
window) goes through it, so every wait has a deadline and a message.
"""

import time


def waitFor(predicate, timeout=10.0, interval=0.05, message="condition"):
    """
    Call C{predicate} until it returns something true, at most every
    C{interval} seconds; return that value.

    @raise AssertionError: naming C{message}, if it is still false after
        C{timeout} seconds (it is always called at least once, and once
        more at or after the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def observe(seconds, sample, interval=0.05):
    """
    Call C{sample} every C{interval} seconds for an observation window of
    C{seconds}.  A true value from C{sample} ends the window early and is
    returned; otherwise returns None once the window has passed.
    """
    end = time.monotonic() + seconds
    seen = []

    def windowOver():
        value = sample()
        if value:
            seen.append(value)
            return True
        return time.monotonic() >= end

    waitFor(windowOver, timeout=seconds + 10 * interval + 5.0, interval=interval,
            message="the end of a %.2fs observation window" % (seconds,))
    return seen[0] if seen else None


def procStatusKiB(pid, field):
    """A C{kB} field (C{VmRSS}, C{VmHWM}, ...) of C{/proc/PID/status}, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def rssKiB(pid):
    """The resident set size of process C{pid}, in KiB."""
    return procStatusKiB(pid, "VmRSS")
