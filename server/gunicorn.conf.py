"""gunicorn settings for tevo-hold. Every value can be overridden on the command line, but for
the logging: ``--log-level`` works, but ``--error-logfile``, ``--access-logfile``,
``--log-config*`` and ``--capture-output`` have no effect (``logconfig_dict`` below sends every
line to stderr: redirect that instead, ``2>>file``).

With no TEVO_HOLD_REDIS_URL (the embedded default) state lives in one process's memory, so one
worker serves every request (with threads); with Redis, workers share the state and scale out.

Logs: JSON lines on stderr, gunicorn's own included; the access log is tevo-hold's own (one line
per request, logger ``tevo_hold.access``), so gunicorn's is off. Lines below WARNING reach stderr
in batches, at most 0.1 s after they are logged.

Connections: each worker listens on a socket of its own (``reuse_port``, SO_REUSEPORT), so the
kernel spreads new connections evenly over the workers. On one shared socket the workers race to
accept, and a burst of connections (a load balancer's or client's kept-alive pool opening at
once) can all land on the worker that woke first: it serves them alone, on one core, while the
others idle. The price: a connection still waiting in a stopping worker's queue is reset, and
its client retries. ``TEVO_HOLD_REUSE_PORT=0`` goes back to one shared socket.

It also means a second server started on the same port does not fail with "address in use": it
joins silently, and the kernel splits new connections between the two. With Redis they share
their state, so nothing is sold twice, but the one you meant to replace keeps serving. In
embedded mode (one worker, state in its memory) ``reuse_port`` is always off: two servers there
would be two stores selling the same tickets, so the second now stops at start-up; and the one
worker's socket would close while it restarts (``--max-requests``, a crash), refusing connections
until the next one listens. With several workers the same happens whenever they are all
restarting at once: seen with 2 workers and ``--max-requests 50`` (jitter or not: about 600
connections refused in 5 s), not with 4. On one shared socket the master keeps it open, and
none is refused.

Control socket (gunicorn 25.1+, for ``gunicornc``): one of this master's own, in the temporary
directory, named after its pid (the log says where). gunicorn's default, one path per user
(``~/.gunicorn/gunicorn.ctl``), would be taken over by the next master started on the host, and
removed by the first to stop.

Metrics: prometheus_client's multiprocess mode, so that ``/metrics`` sums every worker's counts.
``PROMETHEUS_MULTIPROC_DIR`` is set here, before anything imports prometheus_client (gunicorn's
logging set-up below imports tevo_hold); unset, it is a directory of this master's own, made at
start-up by ``tempfile.mkdtemp`` (private to its user, under a name no one could have taken in
advance), kept by a reload (SIGHUP; the environment variable ``TEVO_HOLD_GUNICORN_METRICS_DIR``
marks it as this master's) and removed at exit. A directory you name is emptied of old files at
start-up: give each gunicorn master its own, writable by its user only.
"""

import atexit
import logging
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import glogging

# The metrics directory this master made, as "<pid>:<path>": a reload (SIGHUP re-executes this
# file in the same master) finds it here and keeps it. Another process's mark (inherited from
# the master that started this one) is not ours: we make a directory of our own.
_METRICS_MARK = "TEVO_HOLD_GUNICORN_METRICS_DIR"


def _own_metrics_dir() -> str | None:
    """The metrics directory of this master's own, made now if need be (``tempfile.mkdtemp``:
    private, 0o700, a name no one had, so nothing planted in advance is used); None when
    ``PROMETHEUS_MULTIPROC_DIR`` names one of the operator's."""
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    pid, _, made = os.environ.get(_METRICS_MARK, "").partition(":")
    if named and named != made:
        return None
    if named and pid == str(os.getpid()) and os.path.isdir(made):
        return made  # reloaded: the directory made at start-up
    made = tempfile.mkdtemp(prefix="tevo-hold-metrics-")
    owner = os.getpid()
    # at exit (also of --check-config), in this process only, not in the forked workers
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(made, ignore_errors=True))
    os.environ[_METRICS_MARK] = f"{owner}:{made}"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


_OWN_METRICS_DIR = _own_metrics_dir()

# Imported only now, with PROMETHEUS_MULTIPROC_DIR set: tevo_hold imports prometheus_client.
from tevo_hold.errors import ConfigurationError  # noqa: E402
from tevo_hold.settings import embedded_url  # noqa: E402

try:
    # As the app reads it: memory:// (or unset) is the embedded default, one worker; MEMORY://
    # or memory:/// stop here, rather than start several workers that each refuse the URL.
    _embedded = embedded_url(os.environ.get("TEVO_HOLD_REDIS_URL", ""))
except ConfigurationError as exc:
    raise SystemExit(str(exc)) from None


def _count(name: str, default: int) -> int:
    """A whole number of at least 1 from the environment; empty counts as unset, as it does for
    the TEVO_HOLD_* settings."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name}={raw!r}: expected a whole number of at least 1, or unset")
    return int(raw)


bind = os.environ.get("TEVO_HOLD_BIND", "127.0.0.1:8000")
workers = 1 if _embedded else _count("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1)
# gunicorn's gthread worker, but its own error answers (a request it cannot read: 400, 414,
# 417, 431, 501) are JSON problem documents like the app's, not HTML pages.
worker_class = "server.gunicorn_worker.JsonErrorWorker"
threads = _count("TEVO_HOLD_THREADS", 8)
# TEvo wants answers well within 5 s; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 30
keepalive = 5


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return raw in ("1", "true", "yes", "on")
    raise SystemExit(f"{name}={raw!r}: expected true or false (1/0, yes/no, on/off)")


# Embedded mode: always one shared socket, whatever TEVO_HOLD_REUSE_PORT says. Its one worker
# has nothing to spread; with reuse_port a second server started on the same port would join
# silently (two stores in two memories: the same tickets sold twice), and while the worker
# restarts no socket listens at all (connections refused).
reuse_port = _flag("TEVO_HOLD_REUSE_PORT", True) and not _embedded
control_socket = str(Path(tempfile.gettempdir()) / f"tevo-hold-{os.getpid()}.ctl")
accesslog = None
errorlog = "-"
# Workers import the app after forking, so no Redis connection is shared across a fork.
preload_app = False

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "tevo_hold.observability.JsonFormatter"}},
    "handlers": {
        # Formatted outside the lock (threads queue only for the write). The access lines are
        # gathered into writes of up to 4 KiB, each at most 0.1 s late: the write(2) per line
        # was a tenth of a request's CPU. A warning or an error is written at once.
        "stderr": {
            "class": "tevo_hold.observability.LineHandler",
            "formatter": "json",
            "flush_interval": 0.1,
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # Off: tevo_hold.access logs each request (gunicorn's line would repeat it, with the
        # query string, which could hold what a careless client put there).
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
}


class _Logger(glogging.Logger):
    """gunicorn's logger, but for its access line, which it would format on every request (all
    the request's headers and more) only for the logger, off above, to drop it; and with
    ``--log-level`` applied after ``logconfig_dict``, which would set INFO over it."""

    def setup(self, cfg):  # type: ignore[no-untyped-def]
        super().setup(cfg)
        for name in ("", "gunicorn.error"):
            logging.getLogger(name).setLevel(self.loglevel)

    def access(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = _Logger


def on_starting(server):  # type: ignore[no-untyped-def]
    """Start with an empty metrics directory: old files would add old counts. (Ours is new and
    empty; one the operator named is emptied.)"""
    if _OWN_METRICS_DIR:
        return
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()


def when_ready(server):  # type: ignore[no-untyped-def]
    """Say where the workers listen: with reuse_port the master binds nothing, and gunicorn's
    own "Listening at:" line shows no address."""
    if server.cfg.reuse_port:
        server.log.info(
            "Workers listen at %s, each on a socket of its own (reuse_port)",
            ", ".join(server.cfg.bind),
        )


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A worker died: drop its live gauges (its counters stay in the sums, as they should)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    if _OWN_METRICS_DIR:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)
