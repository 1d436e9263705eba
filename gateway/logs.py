"""JSON log lines for the daemon: our events and the stdlib loggers (aioimaplib, SQLAlchemy) alike."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,  # the per-message id bound in the pipeline
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(level: str = "info") -> None:
    """Every line one JSON object on stderr. Nothing here adds register data: events carry ids and counts only."""
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO would log SQL parameters and IMAP lines; only their warnings are wanted.
    for noisy in ("aioimaplib", "sqlalchemy", "aiosqlite", "asyncio", "gnupg", "mail.log", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
