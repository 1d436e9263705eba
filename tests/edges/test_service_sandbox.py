"""The unit's ExecStart inside the unit's own sandbox (tests/support/unit.py): the system-call filter, no memory
both writable and executable, a read-only file system but for the state directory, no capabilities. A request
in the mailbox is answered through the relay, and SIGTERM stops it: so nothing the gateway, gpg, gpg-agent,
openssl or a library it loads does at start or per request falls outside what the shipped unit allows."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from gateway.crypto import kill_agent
from gateway.dev.dovecot import ImapServer
from tests.support.addresses import POLICE_ADDRESS
from tests.support.daemon import daemon_settings, until
from tests.support.gateway_cli import Gateway
from tests.support.keys import AuthorityKeys
from tests.support.relay import Relay, serve
from tests.support.requests import request_from_police
from tests.support.sqlite_only import database_url  # noqa: F401 - the fixture: the sandbox, not the database
from tests.support.unit import exec_start, interpreter_paths, require_sandbox, sandboxed, unit

GATEWAY = Path(sys.executable).parent / "gateway"


@pytest.fixture
def sandbox() -> None:
    require_sandbox()


def inside(writable: Path, *command: str) -> subprocess.CompletedProcess[str]:
    argv = sandboxed(list(command), writable, interpreter_paths(), {})
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_the_sandbox_refuses_what_the_unit_forbids(sandbox: None, tmp_path: Path) -> None:
    """The emulation is no stand-in unless it bites: each of the unit's settings, shown refusing."""
    service = unit()["Service"]
    assert service["SystemCallFilter"] == "@system-service"
    assert service["MemoryDenyWriteExecute"] == "yes"
    python = sys.executable
    wx = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    refused = inside(tmp_path, python, "-c", wx)
    assert refused.returncode == 1
    assert "PermissionError" in refused.stderr
    # swapoff(2) is in @swap, outside @system-service: the process is killed (SIGSYS), not told EPERM.
    killed = inside(tmp_path, python, "-c", "import ctypes; ctypes.CDLL(None).swapoff(b'/nonexistent')")
    assert killed.returncode == 128 + signal.SIGSYS  # bubblewrap passes its child's death on as a shell does
    read_only = inside(tmp_path, python, "-c", f"open({str(Path(python).parent / 'probe')!r}, 'w')")
    assert "Read-only file system" in read_only.stderr
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as outside:
        private = inside(tmp_path, "/bin/sh", "-c", f"test -e {outside.name} && echo seen || echo hidden")
    assert private.stdout == "hidden\n", private.stderr
    no_caps = inside(tmp_path, "/bin/sh", "-c", "grep CapEff /proc/self/status; umask")
    assert no_caps.stdout.split() == ["CapEff:", "0000000000000000", service["UMask"]]
    works = inside(tmp_path, "/bin/sh", "-c", "echo ok > here && cat here")
    assert works.stdout == "ok\n"


async def test_the_units_command_answers_a_request_inside_the_units_sandbox(
    sandbox: None,
    live: Gateway,
    dovecot_server: ImapServer,
    keys: AuthorityKeys,
) -> None:
    relay = Relay()
    server, port = await serve(relay)
    live.write_config(daemon_settings(dovecot_server, port))
    kill_agent(live.gnupg_home)  # the sandboxed gpg starts its own agent, inside the sandbox
    environment = dict(line.split("=", 1) for line in [unit()["Service"]["Environment"]])
    assert set(environment) == {"GATEWAY_CONFIG"}
    environment["GATEWAY_CONFIG"] = str(live.config_path)
    argv = sandboxed(exec_start(GATEWAY), live.directory, interpreter_paths(), environment)
    bwrap = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        log = b""
        assert bwrap.stderr is not None
        while b'"event": "started"' not in log:
            line = await asyncio.wait_for(bwrap.stderr.readline(), 60)
            assert line, f"the unit's command ended before it started: {log.decode()[-2000:]}"
            log += line
        dovecot_server.deliver(request_from_police(keys))
        await until(lambda: relay.received, 60, "the reply at the relay")
        # systemd signals the main process: bubblewrap's child, which `exec gateway run` became.
        [main] = Path(f"/proc/{bwrap.pid}/task/{bwrap.pid}/children").read_text().split()
        assert b"run" in Path(f"/proc/{main}/cmdline").read_bytes().split(b"\0")  # `exec gateway run` took its place
        subprocess.run(["kill", "-TERM", main], check=True)
        stdout, stderr = await asyncio.wait_for(bwrap.communicate(), 30)
    finally:
        if bwrap.returncode is None:
            bwrap.kill()
            await bwrap.wait()
        server.close()
        kill_agent(live.gnupg_home)

    log += stderr
    assert bwrap.returncode == 0, log.decode()[-2000:]
    assert "signing key" in stdout.decode()  # init ran first, in the same sandbox
    events = [json.loads(line) for line in log.decode().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "message" and e.get("outcome") == "answered" for e in events)
    assert events[-1]["event"] == "stopped"
    [delivered] = relay.received
    assert delivered.rcpt_tos == [POLICE_ADDRESS]
    reply = message_from_bytes(bytes(delivered.original_content or b""), policy=policy.default)
    assert reply.get_content_type() == "multipart/encrypted"
