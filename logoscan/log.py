"""structlog set-up: JSON lines off a TTY, readable console on one; run_id bound everywhere."""
from __future__ import annotations

import logging
import sys

import structlog


class _Stderr:
    """Whatever sys.stderr is when a line is written, not when logging was configured: a stream
    swapped out and closed since (a test's capture, a notebook cell) must not break later logs."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


_level = "INFO"


def configure(run_id: str | None = None, level: str | None = None, json: bool | None = None) -> None:
    """Set up logging and bind ``run_id``. Without ``level`` the level set last in this process
    stays (a sweep binding its run id must not undo `logoscan demo`'s quieter WARNING)."""
    global _level
    _level = level = level or _level
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False)
    structlog.contextvars.clear_contextvars()
    if run_id:
        structlog.contextvars.bind_contextvars(run_id=run_id)


if not structlog.is_configured():
    # a library call logging before any configure() (a notebook, a test calling add_logo) would
    # print with structlog's default logger on stdout, into the JSON a command prints there
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=_Stderr()))


def get_logger(name: str = "logoscan"):
    return structlog.get_logger(name)
