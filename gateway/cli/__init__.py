"""The `gateway` command: a root module builds the parser from one module per noun, each holding its handlers
beside its options; `output` is how every command speaks."""

from gateway.cli.root import build_parser, main

__all__ = ["build_parser", "main"]
