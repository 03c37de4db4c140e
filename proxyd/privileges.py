# -*- test-case-name: tests.unit.test_privileges -*-
"""
Life after twistd's C{--uid}/C{--gid}.  twistd binds the ports as root
(C{privilegedStartService}), switches to the run user, and only then calls
C{startService}.  Whatever proxyd opens from then on, it opens as the run
user, so L{checkAfterDrop}, called first thing in
L{proxyd.service.ProxyService.startService}, looks once at those files as
that user and says in one line what will not work:

  - a plugin service that opens its file when it starts (C{har}'s
    C{file=}) and cannot: start-up is refused, exit status 1.  It could
    not record anything, and would otherwise fail a moment later with a
    traceback.
  - the access log's directory, if the run user cannot create files in
    it: a warning.  The log was opened before the drop and is written all
    along; only a C{SIGHUP} after logrotate has moved it away needs a new
    file there, and that still works when logrotate creates it for the run
    user (C{create 0640 USER GROUP}, as C{etc/logrotate.d/proxyd} does) or
    rotates with C{copytruncate}.  A reopen that fails anyway keeps writing
    the file it had (L{proxyd.accesslog.AccessLog.reopen}), so no line is
    lost and nothing crashes.
  - the files C{SIGHUP} reads again (the config file, certificates, keys,
    CA bundles), if the run user cannot read them: a warning; such a
    reload keeps the running configuration and says why.

Refusing for the access log would stop set-ups that work (copytruncate, or
logrotate's C{create} for the run user, or no rotation at all), which is
why that one is only a warning; the daemon works until the first rotation
and even then loses nothing.

The mitm CA needs nothing here: it is read (or made, key 0600 for root)
before the drop and held in memory, and a reload keeps it.

By convention a plugin rewriter that is an L{IService} and has a C{path}
attribute opens that file for writing when it starts.
"""

import os
import pwd
import sys

from twisted.application.service import IService
from twisted.logger import Logger

__all__ = ["checkAfterDrop", "problems", "runUser"]

_log = Logger()


def runUser(geteuid=os.geteuid, getpwuid=pwd.getpwuid):
    """
    Who proxyd runs as, for a log line: C{"nobody (uid 65534)"}.
    """
    uid = geteuid()
    try:
        name = getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return f"{name} (uid {uid})"


def _access(path, mode):
    """L{os.access} for the effective ids, which twistd's C{--euid} changes alone."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _parent(path):
    return os.path.dirname(os.path.abspath(path)) or "/"


def _cannotWrite(path, access):
    """
    Why the run user cannot write C{path} (the file, or create it in its
    directory), or L{None} if it can.
    """
    if access(path, os.F_OK):
        return None if access(path, os.W_OK) else f"{path} is not writable by it"
    directory = _parent(path)
    if not access(directory, os.F_OK):
        return f"{directory} does not exist or cannot be reached"
    if not access(directory, os.W_OK | os.X_OK):
        return f"it cannot create files in {directory}"
    return None


def _reloadedFiles(config):
    """The files SIGHUP reads again, in a stable order without repeats."""
    paths = [config.configFile]
    for pair in getattr(config.serverTLS, "pairs", ()) or ():
        paths += [pair.certPath, pair.keyPath]
    paths.append(config.clientCA)
    paths += list(config.upstreamCA or ())
    return [str(p) for p in dict.fromkeys(paths) if p]


def problems(config, access=_access, user=None):
    """
    What the run user cannot open of what C{config} will open after the
    privilege drop.

    @param access: C{(path, mode) -> bool}, like L{os.access}.
    @param user: the run user for the lines; L{runUser} by default.
    @return: C{(refusals, warnings)}, lists of one-line messages.
    """
    user = user or runUser()
    name = user.split(" ", 1)[0]
    refusals, warnings = [], []
    for plugin in config.plugins:
        rewriter = plugin.rewriter
        path = getattr(rewriter, "path", None)
        if not (IService.providedBy(rewriter) and isinstance(path, str)):
            continue
        why = _cannotWrite(path, access)
        if why is not None:
            refusals.append(f"proxyd: --plugin {plugin.label}: cannot write {path} as {user}: {why}")
    log = config.accessLog
    if log is not None and log != "-":
        directory = _parent(log)
        if not access(directory, os.W_OK | os.X_OK):
            warnings.append(
                f"--access-log {log}: {user} cannot create files in {directory}, so after logrotate "
                f"moves the log away SIGHUP can reopen it only if logrotate creates the new file for "
                f"{name} (create 0640 {name} GROUP) or rotates with copytruncate; otherwise lines go on "
                f"to the moved file"
            )
    unreadable = [path for path in _reloadedFiles(config) if not access(path, os.R_OK)]
    if unreadable:
        warnings.append(
            f"SIGHUP cannot re-read {', '.join(unreadable)}: {user} cannot read "
            f"{'it' if len(unreadable) == 1 else 'them'}; a reload keeps the running configuration, "
            f"a restart reads them as root"
        )
    return refusals, warnings


def checkAfterDrop(config, access=_access, user=None, log=None, stderr=None):
    """
    Check, as the run user, what proxyd opens after twistd dropped
    privileges: log each warning in one line, and refuse to start with the
    first refusal, printed in one line on the real stderr.

    @raise proxyd.service.StartupError: a plugin cannot write its file.
    """
    from proxyd.service import StartupError

    refusals, warnings = problems(config, access, user)
    log = log or _log
    for warning in warnings:
        log.warn("{warning}", warning=warning)
    if refusals:
        stderr = stderr or sys.__stderr__
        stderr.write(refusals[0] + "\n")
        stderr.flush()
        raise StartupError(refusals[0])
