"""gunicorn's settings and logger for the node's workers (dlba/proxy/arbiter.py)."""

from __future__ import annotations

import logging
import math
from typing import Any

from gunicorn.app.base import BaseApplication

from dlba.proxy.worker import DRAIN_S

events = logging.getLogger("dlba.event")


class EventLog:
    """gunicorn's logger interface, onto the node's one-line event log."""

    def __init__(self, cfg: object = None) -> None:
        self.cfg = cfg

    def _log(self, level: int, msg: str, *args: Any, **_: Any) -> None:
        if events.isEnabledFor(level):
            events.log(level, "event=gunicorn message=%r", msg % args if args else msg)

    def critical(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.CRITICAL, msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.INFO, msg, *args, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kw)

    def log(self, level: int, msg: str, *args: Any, **kw: Any) -> None:
        self._log(level, msg, *args, **kw)

    def setup(self, cfg: object) -> None:
        self.cfg = cfg

    def reopen_files(self) -> None:
        """Logs go to stderr: nothing to reopen."""

    def close_on_exec(self) -> None:
        """Logs go to stderr, which workers share."""


class NodeApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's settings for the node's workers; the proxy is the application."""

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("workers", self.workers)
        self.cfg.set("timeout", max(1, math.ceil(self.timeout_s)))
        self.cfg.set("graceful_timeout", int(DRAIN_S))
        self.cfg.set("worker_class", "dlba.proxy.worker.ProxyWorker")
        self.cfg.set("logger_class", "dlba.proxy.gunicorn_app.EventLog")

    def load(self) -> None:
        return None
