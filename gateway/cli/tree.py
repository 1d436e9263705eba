"""The command tree's builder: the options many commands share, a group per noun, a command per verb."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class Parents:
    """Options shared by many commands; argparse needs them as parent parsers."""

    common: argparse.ArgumentParser
    acting: argparse.ArgumentParser
    listing: argparse.ArgumentParser
    signing: argparse.ArgumentParser


def parents() -> Parents:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a sub-command's default from overwriting a value given before the sub-command.
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="settings file (default: $GATEWAY_CONFIG, else ./config/gateway.toml)",
    )
    acting = argparse.ArgumentParser(add_help=False)
    acting.add_argument(
        "--actor",
        default=argparse.SUPPRESS,
        help="who is making this change, for the audit trail (default: your OS user name)",
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    signing = argparse.ArgumentParser(add_help=False)
    signing.add_argument(
        "--local-user",
        metavar="KEY",
        help="sign the change's statement with this admin key, in your own gpg (agent, pinentry or smartcard)",
    )
    signing.add_argument("--gpg-home", metavar="DIR", help="your GnuPG home for signing (default: gpg's own)")
    return Parents(common, acting, listing, signing)


class Commands:
    """Builds the command tree: a group is a noun, a command a verb under it."""

    def __init__(self, root: argparse.ArgumentParser, parents: Parents) -> None:
        self.parents = parents
        self.root = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(self, name: str, help_text: str) -> Any:
        sub = self.root.add_parser(name, help=help_text, description=help_text, parents=[self.parents.common])
        return sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    def command(
        self,
        group: Any,
        name: str,
        handler: Handler,
        help_text: str,
        *,
        acting: bool = False,
        listing: bool = False,
        signing: bool = False,
    ) -> argparse.ArgumentParser:
        parents = [self.parents.common]
        parents += [self.parents.acting] if acting else []
        parents += [self.parents.listing] if listing else []
        parents += [self.parents.signing] if signing else []
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text, parents=parents)
        sub.set_defaults(handler=handler)
        return sub
