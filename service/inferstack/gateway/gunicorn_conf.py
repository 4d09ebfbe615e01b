"""Gunicorn configuration for the gateway.

    gunicorn -c python:inferstack.gateway.gunicorn_conf 'inferstack.gateway.app:create_app()'

(``inferstack gateway`` runs exactly this.) Every value comes from :class:`GatewaySettings`, so
one ``INFERSTACK_*`` environment / ``INFERSTACK_CONFIG`` file drives master and workers.
``kill -HUP <master>`` (``systemctl reload``) starts fresh workers and lets the old ones finish
their streams for up to ``graceful_timeout_s``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inferstack.gateway import shared
from inferstack.gateway.settings import ENV_PREFIX, GatewaySettings
from inferstack.settings_source import SettingsFileError, describe_validation_error

try:
    _settings = GatewaySettings()
except ValidationError as _exc:
    sys.stderr.write(describe_validation_error(_exc, ENV_PREFIX) + "\n")
    sys.exit(2)
except SettingsFileError as _exc:
    sys.stderr.write(f"{_exc}\n")
    sys.exit(2)

# Prometheus multiprocess mode: must be in the environment before any worker imports
# prometheus_client. The default directory is keyed by the master's pid, so a HUP reload
# (which re-reads this module in the same master) keeps counting in the same place.
_metrics_dir = Path(
    _settings.metrics_dir
    or os.path.join(tempfile.gettempdir(), f"inferstack-gateway-metrics-{os.getpid()}")
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

# Workers share one listening socket and libuv accepts every pending connection per wakeup,
# so one worker would take a whole burst of connections while the others idle (measured:
# 3064 of 3064 requests on one of two workers). One accept per wakeup spreads them.
os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
# Read by the workers (worker.py) when they are told to stop.
os.environ["INFERSTACK_LAME_DUCK_S"] = str(_settings.lame_duck_s)

wsgi_app = "inferstack.gateway.app:create_app()"
bind = [_settings.bind] if isinstance(_settings.bind, str) else list(_settings.bind)
workers = _settings.workers
worker_class = "inferstack.gateway.worker.GatewayWorker"
graceful_timeout = int(_settings.graceful_timeout_s)
timeout = 60  # worker heartbeat, not a request timeout (async workers)
keepalive = int(_settings.keepalive_s)
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
backlog = 4096
proc_name = "inferstack-gateway"
accesslog = None
loglevel = _settings.log_level
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "inferstack.logs.JsonFormatter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"handlers": ["stderr"], "level": _settings.log_level.upper()},
    "loggers": {
        "gunicorn.error": {"handlers": [], "propagate": True},
        "gunicorn.access": {"handlers": [], "propagate": False},
    },
}


# In-flight counts shared by the workers (see inferstack.gateway.shared). Rows for four times
# the workers: during HUP reloads, old workers finish their streams beside the new ones.
_slots = shared.SlotAllocator(shared.InflightTable(slots=4 * _settings.workers))
shared.TABLE = _slots.table
# Engine-reported load (inferstack.gateway.loadreport): one shared row, and the lock file that
# elects the worker that polls the engines.
shared.REPORTED = shared.InflightTable(slots=1)
shared.POLLER_LOCK = os.path.join(tempfile.gettempdir(), f"inferstack-gateway-{os.getpid()}.lock")


def pre_fork(server: Any, worker: Any) -> None:
    """Give the worker about to be forked its own row of the shared in-flight table."""
    worker.inferstack_slot = shared.SLOT = _slots.take()


def on_starting(server: Any) -> None:
    """Empty metrics directory: stale files from a previous master would double-count."""
    _metrics_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker: its in-flight row, and its live gauges (its counters stay, so
    totals never go back)."""
    from prometheus_client import multiprocess

    if getattr(worker, "inferstack_slot", None) is not None:
        _slots.give_back(worker.inferstack_slot)
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if shared.POLLER_LOCK:
        Path(shared.POLLER_LOCK).unlink(missing_ok=True)
    if not _settings.metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
