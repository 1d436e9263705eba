"""A private Rspamd for tests: the milter a test Postfix asks, checking SPF, DKIM and DMARC against the test's DNS
server and writing Authentication-Results; its own config, run and database folders, one worker on loopback."""

from __future__ import annotations

import functools
import grp
import os
import pwd
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.foreground import HOST, Foreground, ServerUnavailable, binary, free_port, greets

INSTALL_HINT = "scripts/test installs it (Debian package rspamd, its service kept from starting)"
SYSTEM_CONFIG = Path("/etc/rspamd")  # the shipped defaults, read only; what a test changes is in its own folder
USER = "_rspamd"  # Debian's; the workers drop root for it

# Modules that reach out (HTTP maps, fuzzy hashes, DNS block lists), keep state in Redis, or change mail: none has
# a place in a test of authentication. The DNS server refuses every other name anyway; this keeps start fast.
TLDS = ("example", "test", "invalid", "uk", "gov.uk", "police.uk", "com", "org", "net")
DISABLED = (
    "arc", "asn", "bimi", "chartable", "dcc", "dkim_signing", "emails", "fuzzy_check", "greylist", "history_redis",
    "metric_exporter", "mid", "mime_types", "multimap", "mx_check", "neural", "phishing", "ratelimit", "rbl",
    "replies", "reputation", "spamassassin", "url_redirector", "whitelist",
)  # fmt: skip


@dataclass(frozen=True)
class Rspamd:
    host: str
    port: int  # the proxy worker, in milter mode, scanning itself
    directory: Path
    _process: Foreground = field(repr=False, compare=False)

    @property
    def milter(self) -> str:
        """The milter address as Postfix's smtpd_milters takes it."""
        return f"inet:{self.host}:{self.port}"

    def stop(self) -> None:
        self._process.stop()

    def log(self) -> str:
        path = self.directory / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _rspamd_conf(port: int) -> str:
    """The top-level file: the shipped one with the proxy as its only worker (no scanner, controller or fuzzy)."""
    return f"""# Written by tests/support/rspamd.py for one test instance.
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=10) "$LOCAL_CONFDIR/override.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
# Milter for Postfix, scanning by itself.
worker "rspamd_proxy" {{
    bind_socket = "{HOST}:{port}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{ default = yes; self_scan = yes; }}
}}
"""


# Loopback is where the test's mail comes from: check it as mail from anywhere else (they skip local mail).
_CHECK_LOOPBACK = "check_local = true;\ncheck_authed = true;\n"


def _overrides(nameserver: str) -> dict[str, str]:
    """override.d files: each replaces the same keys of the shipped configuration."""
    files = {
        "options.inc": f"""dns {{ nameserver = ["{nameserver}"]; timeout = 2s; retransmits = 2; }}
local_addrs = [];
disable_hyperscan = true;
url_tld = "$CONFDIR/test_tlds.dat";
{_CHECK_LOOPBACK}""",
        "spf.conf": _CHECK_LOOPBACK,
        "dkim.conf": _CHECK_LOOPBACK,
        "dmarc.conf": _CHECK_LOOPBACK + "reporting { enabled = false; }\n",
        # Authentication-Results on every message, on top, with the MTA's name (Postfix's myhostname, from the
        # milter) as its authserv-id. Rspamd strips every such header the sender wrote unless told otherwise
        # (remove = 0, "all"): here they are kept, below ours, to show that the gateway reads only the topmost,
        # as it must behind a border that does not strip them.
        "milter_headers.conf": """use = ["authentication-results"];
skip_local = false;
skip_authenticated = false;
routines { "authentication-results" { remove = false; } }
""",
        # The border here only reports what it found, and the gateway decides: no score rejects or changes mail.
        "actions.conf": "greylist = 9996;\nadd_header = 9997;\nrewrite_subject = 9998;\nreject = 9999;\n",
    }
    files |= {f"{module}.conf": "enabled = false;\n" for module in DISABLED}
    return files


def start_rspamd(directory: Path, *, nameserver: str) -> Rspamd:
    """Rspamd from a copy of the shipped configuration under `directory`, its overrides written there too, asking
    only `nameserver` (HOST:PORT). Raises ServerUnavailable when Rspamd is missing or cannot run here,
    RuntimeError when it will not start."""
    rspamd = binary("rspamd", "/usr/bin/rspamd", "/usr/sbin/rspamd", hint=INSTALL_HINT)
    if not (SYSTEM_CONFIG / "rspamd.conf").exists():
        raise ServerUnavailable(f"Rspamd's shipped configuration is missing ({SYSTEM_CONFIG}): {INSTALL_HINT}")
    directory = directory.resolve()
    config = directory / "etc"
    # A copy of the shipped defaults, without the machine's own local.d and override.d: ours replace them.
    shutil.copytree(SYSTEM_CONFIG, config, ignore=shutil.ignore_patterns("local.d", "override.d"))
    # The public suffixes: the full list takes Rspamd some 8 s to compile at every start; the test's domains
    # need only their own, and the organisational domains DMARC finds from them come out the same.
    (config / "test_tlds.dat").write_text(
        "// tests/support/rspamd.py: the test domains' public suffixes\n" + "\n".join(TLDS) + "\n"
    )
    override = config / "override.d"
    override.mkdir()
    for name, text in _overrides(nameserver).items():
        (override / name).write_text(text)
    run, db = directory / "run", directory / "db"
    run.mkdir()
    db.mkdir()
    user = _user()
    if user is not None:
        for folder in (directory, run, db):
            os.chown(folder, user.pw_uid, user.pw_gid)

    last_error: RuntimeError | None = None
    for _ in range(5):
        port = free_port()
        (config / "rspamd.conf").write_text(_rspamd_conf(port))
        process = Foreground("Rspamd", directory / "rspamd.out")
        argv = [
            rspamd, "--no-fork", "--config", str(config / "rspamd.conf"),
            f"--var=CONFDIR={config}", f"--var=LOCAL_CONFDIR={config}", f"--var=RUNDIR={run}",
            f"--var=DBDIR={db}", f"--var=LOGDIR={directory}",
        ]  # fmt: skip
        argv += ["--user", user.pw_name, "--group", grp.getgrgid(user.pw_gid).gr_name] if user is not None else []
        try:
            process.start(argv, functools.partial(greets, port, b""))
        except RuntimeError as exc:
            last_error = RuntimeError(f"{exc}; rspamd.log: {_tail(directory / 'rspamd.log')}")
            if "Address already in use" in str(last_error):
                continue
            raise last_error from None
        return Rspamd(HOST, port, directory, process)
    raise RuntimeError(f"Rspamd found no free port: {last_error}")


def _tail(path: Path, limit: int = 3000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else "none"


def _user() -> pwd.struct_passwd | None:
    """Rspamd's own user when started as root (it refuses to run its workers as root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        raise ServerUnavailable(f"the {USER} user is missing: {INSTALL_HINT}") from None
