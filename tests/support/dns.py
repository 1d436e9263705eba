"""A private Unbound on a loopback port serving the test domains' records, and refusing every other name: the
border's DNS, which never asks the machine's resolver or anything off the machine."""

from __future__ import annotations

import functools
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.foreground import HOST, Foreground, binary, free_port

INSTALL_HINT = "scripts/test installs it (Debian package unbound, its service kept from starting)"
_NAME = re.compile(r"(?:[a-z0-9_-]+\.)+")  # a fully qualified name, lower case, with its final dot
_TXT_CHUNK = 255  # bytes in one character-string (RFC 1035 3.3); longer TXT data is several strings


@dataclass(frozen=True)
class Dns:
    host: str
    port: int
    directory: Path
    _process: Foreground = field(repr=False, compare=False)

    @property
    def nameserver(self) -> str:
        """HOST:PORT, as resolvers that take a port want it."""
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self._process.stop()


def txt(name: str, text: str) -> str:
    """A TXT record in zone-file form, its text cut into character-strings of at most 255 bytes."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a fully qualified lower-case name with its final dot")
    if '"' in text or "\\" in text or not text.isascii():
        raise ValueError("TXT text here is printable ASCII without quotes or backslashes")
    chunks = [text[i : i + _TXT_CHUNK] for i in range(0, len(text), _TXT_CHUNK)]
    return f"{name} 300 IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def _config(directory: Path, port: int, zones: Mapping[str, Sequence[str]]) -> str:
    lines = [
        "# Written by tests/support/dns.py for one test server.",
        "server:",
        f"  interface: {HOST}@{port}",
        f"  port: {port}",
        "  do-ip4: yes",
        "  do-ip6: no",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        f'  pidfile: "{directory}/unbound.pid"',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 1",
        "  log-queries: yes",
        "  access-control: 127.0.0.0/8 allow",
        '  module-config: "iterator"',
        # Every name but the test zones is refused here, before any lookup: nothing is ever asked upstream.
        '  local-zone: "." refuse',
    ]
    for zone, records in zones.items():
        if not _NAME.fullmatch(zone):
            raise ValueError(f"{zone!r} is not a fully qualified lower-case name with its final dot")
        lines.append(f'  local-zone: "{zone}" static')
        lines += [f"  local-data: '{record}'" for record in records]
    lines += [
        # Should anything slip past the refusal, it is sent to a port on loopback where nothing listens.
        "  do-not-query-localhost: no",
        "forward-zone:",
        '  name: "."',
        "  forward-addr: 127.0.0.1@9",
        "remote-control:",
        "  control-enable: no",
    ]
    return "\n".join(lines) + "\n"


def start_dns(directory: Path, zones: Mapping[str, Sequence[str]]) -> Dns:
    """Unbound on a free loopback port (UDP and TCP) answering for `zones` (zone name with its final dot ->
    records in zone-file form, e.g. txt(...)); REFUSED for every other name. Raises ServerUnavailable when
    Unbound is missing, RuntimeError when it will not start."""
    unbound = binary("unbound", "/usr/sbin/unbound", hint=INSTALL_HINT)
    checker = binary("unbound-checkconf", "/usr/sbin/unbound-checkconf", hint=INSTALL_HINT)
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    last_error: RuntimeError | None = None
    for _ in range(5):
        port = free_port()
        config = directory / "unbound.conf"
        config.write_text(_config(directory, port, zones))
        # A mistake in the records is told here, in Unbound's words, rather than as a server that never answers.
        checked = subprocess.run([checker, str(config)], capture_output=True, text=True, check=False, timeout=30)
        if checked.returncode != 0:
            raise RuntimeError(f"unbound-checkconf refused {config}: {checked.stdout}{checked.stderr}")
        process = Foreground("Unbound", directory / "unbound.log")
        try:
            process.start([unbound, "-d", "-c", str(config)], functools.partial(_answers, port))
        except RuntimeError as exc:
            last_error = exc
            if "already in use" in str(exc) or "could not open ports" in str(exc):
                continue
            raise
        return Dns(HOST, port, directory, process)
    raise RuntimeError(f"Unbound found no free port: {last_error}")


def _answers(port: int) -> bool:
    """Unbound answers a query over UDP (REFUSED will do: it is listening)."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x04test\x00\x00\x10\x00\x01"  # TXT test.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.sendto(query, (HOST, port))
            return probe.recv(512)[:2] == b"\xab\xcd"
        except OSError:
            return False
