"""The one exception type that carries a message meant for the person at the keyboard."""


class GatewayError(Exception):
    """A problem the user can fix; its message is shown as one line, without a traceback."""

    exit_code = 1


class ConfigError(GatewayError):
    """The settings file is missing, unreadable or invalid."""

    exit_code = 78  # EX_CONFIG from sysexits.h


class UsageError(GatewayError):
    """A command was given arguments that cannot work together."""

    exit_code = 64  # EX_USAGE
