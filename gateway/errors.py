"""The exception types that carry a message meant for the person at the keyboard; a refusal that names the
fields of a change, so that each front end words a field its own way (the CLI: as its option)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class GatewayError(Exception):
    """A problem the user can fix; its message is shown as one line, without a traceback."""

    exit_code = 1


class ConfigError(GatewayError):
    """The settings file is missing, unreadable or invalid."""

    exit_code = 78  # EX_CONFIG from sysexits.h


class UsageError(GatewayError):
    """A command was given arguments that cannot work together."""

    exit_code = 64  # EX_USAGE


@dataclass(frozen=True)
class Field:
    """A field of a change as a refusal names it: `name` is the parameter it is given as."""

    name: str


class FieldError(GatewayError):
    """A refusal told in parts, text and fields; as a plain string each field reads as its own name."""

    def __init__(self, *parts: str | Field) -> None:
        self.parts = parts
        super().__init__(self.say(lambda field: field.name))

    def say(self, word: Callable[[Field], str]) -> str:
        """The message with each field in the words of whoever shows it."""
        return "".join(word(part) if isinstance(part, Field) else part for part in self.parts)


class FieldUsageError(FieldError, UsageError):
    """Values (or a lack of them) that cannot work as given, naming their fields; exits as a usage error."""
