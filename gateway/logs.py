"""JSON log lines for the daemon: our events and the stdlib loggers (aioimaplib, SQLAlchemy) alike."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,  # the per-message id bound in the pipeline
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _error_of(exc_info: Any) -> BaseException | None:
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, tuple):
        exc_info = exc_info[1]
    return exc_info if isinstance(exc_info, BaseException) else None


def where_it_failed(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """An exception as its types and the lines it went through, never its text: a database error quotes the
    statement's parameters, a parser's error the input, so their text can hold register data or a password.
    Stands in for structlog's format_exc_info, for our events and libraries' (aiosmtpd logs session errors)."""
    error = _error_of(event.pop("exc_info", None))
    if error is None:
        return event
    chain: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 5:
        chain.append(f"{type(seen).__module__}.{type(seen).__qualname__}")
        seen = seen.__cause__ or seen.__context__
    frames = traceback.extract_tb(error.__traceback__)[-10:]
    event["exception"] = {
        "types": chain,
        "frames": [f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}" for frame in frames],
    }
    return event


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
                where_it_failed,  # not format_exc_info: a traceback's text can quote what it failed on
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO would log SQL parameters and IMAP lines, and Alembic's two lines on its context at
    # every start (the schema check) say nothing an operator needs; only their warnings are wanted. MSAL at DEBUG
    # would log the token requests and answers.
    for noisy in ("aioimaplib", "sqlalchemy", "aiosqlite", "asyncio", "mail.log", "apscheduler", "alembic", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns of each retry of a token request whose failure the gateway then reports in its own words.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    # python-gnupg warns of every non-zero gpg exit, which the gateway reads and reports itself.
    logging.getLogger("gnupg").setLevel(logging.ERROR)
