"""A private, real Dovecot IMAP server on 127.0.0.1 with its own config, state and maildir, for tests and benchmarks;
optionally with LMTP on 127.0.0.1 too, for an MTA to deliver into the same mailbox."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install it with `apt-get install dovecot-imapd` (scripts/test does this)"

HOST = "127.0.0.1"
USERNAME = "gateway"
PASSWORD = "gateway-test-password"  # noqa: S105 - a throwaway account on a loopback-only test server

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 30.0

# Dovecot's config syntax has no quoting for passdb/userdb args and expands %-variables in paths:
# refuse anything that could be misread rather than escaping it.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")
# Where Debian (and a source build) put the LMTP server, which comes in a package of its own.
_LMTP_BINARIES = ("/usr/lib/dovecot/lmtp", "/usr/libexec/dovecot/lmtp", "/usr/local/libexec/dovecot/lmtp")
# Unix sockets live in base_dir and their paths must fit sun_path (108 bytes, minus the longest socket name).
_MAX_BASE_DIR = 80


class DovecotUnavailable(RuntimeError):
    """Dovecot is not installed: callers should skip (or fail, when Dovecot is required) rather than error."""


def find_binary(name: str, *fallbacks: str) -> str | None:
    """A program's path, else the first of `fallbacks` that can run: /usr/sbin is often missing from a non-root
    PATH, and that is exactly where Debian puts its servers (dovecot, postfix, unbound)."""
    found = shutil.which(name)
    if found:
        return found
    return next((path for path in fallbacks if os.access(path, os.X_OK)), None)


def _binaries() -> tuple[str, str]:
    dovecot = find_binary("dovecot", "/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
    doveadm = find_binary("doveadm", "/usr/bin/doveadm", "/usr/local/bin/doveadm")
    if dovecot is None or doveadm is None:
        raise DovecotUnavailable(f"IMAP tests need a real Dovecot server, which is not installed: {INSTALL_HINT}")
    return dovecot, doveadm


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Something listens on `port` on 127.0.0.1."""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def greets(port: int, prefix: bytes = b"* OK") -> bool:
    """The server on `port` accepted a connection and its first words start with `prefix` (b"" for any). A bare
    TCP accept is not enough: the kernel accepts into the backlog before imap-login is ready."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as connection:
            return not prefix or connection.recv(1024).startswith(prefix)
    except OSError:
        return False


def _signal_group(group: int, signo: signal.Signals) -> None:
    # The group is gone once every member has exited: nothing is left to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signo)


def stop_group(popen: subprocess.Popen[bytes]) -> None:
    """Stop a server started as the leader of its own process group (start_new_session): SIGTERM to the group,
    SIGKILL if the leader is still there after STOP_TIMEOUT, then SIGKILL to whatever ignored SIGTERM or
    outlived its leader; the leader is reaped. The whole group, not just the leader: a Dovecot master told to
    stop leaves logged-in imap processes serving their clients, and tests of reconnection need those to drop."""
    _signal_group(popen.pid, signal.SIGTERM)
    try:
        popen.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _signal_group(popen.pid, signal.SIGKILL)
        popen.wait(STOP_TIMEOUT)
    _signal_group(popen.pid, signal.SIGKILL)


@dataclass
class _Process:
    # The dataclass below is frozen; the running master is the one thing about a server that changes.
    popen: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    username: str
    password: str
    directory: Path
    # LMTP (RFC 2033) on this port, when started with lmtp=True: any address whose local part is `username`
    # is delivered to this one mailbox's INBOX.
    lmtp_port: int | None = None
    # Dovecot's SASL authentication on this port, when started with sasl=True: for an MTA's submission port.
    sasl_port: int | None = None
    _process: _Process = field(default_factory=_Process, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def log(self) -> Path:
        """Dovecot's own log: the first place to look when a login or a mailbox operation fails."""
        return self.directory / "dovecot.log"

    def start(self) -> None:
        """Start the master in the foreground as our child, so stop() can reap it; wait until it greets."""
        if self._process.popen is not None and self._process.popen.poll() is None:
            raise RuntimeError(f"Dovecot in {self.directory} is already running")
        dovecot, _ = _binaries()
        with (self.directory / "dovecot.stderr").open("wb") as stderr:
            # A session of its own: a terminal's SIGINT/SIGHUP is for pytest, which stops us in teardown.
            popen = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [dovecot, "-F", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        self._process.popen = popen
        deadline = time.monotonic() + START_TIMEOUT
        while not greets(self.port):
            if popen.poll() is not None:
                self._process.popen = None
                raise RuntimeError(f"Dovecot exited with status {popen.returncode} on start: {self._diagnostics()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Dovecot did not answer on {self.host}:{self.port}: {self._diagnostics()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop this instance only (never a system Dovecot) and wait until its port refuses connections."""
        popen = self._process.popen
        self._process.popen = None
        if popen is not None:
            stop_group(popen)  # this instance's group only: never a system Dovecot
        # imap-login children share the listening socket and can outlive the master by a moment.
        deadline = time.monotonic() + STOP_TIMEOUT
        while accepts(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.host}:{self.port} still accepts connections after Dovecot stopped")
            time.sleep(0.02)

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        """Save a raw message into an existing folder through Dovecot itself, so IDLE clients are told at once."""
        _, doveadm = _binaries()
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [doveadm, "-c", str(self.config), "save", "-u", self.username, "-m", folder],
            input=raw,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"doveadm save into {folder!r} failed ({result.returncode}): {message}")

    def kick(self, user: str | None = None) -> None:
        """Drop every session of the user (the test account by default), as a server does when a token expires:
        Dovecot checks an OAuth token only at login."""
        self._doveadm("kick", user or self.username)

    def message_count(self, folder: str) -> int:
        """How many messages a folder holds, asked of Dovecot itself (no login: works whatever the passdb);
        -1 when the folder does not exist."""
        result = self._doveadm("mailbox", "status", "-u", self.username, "messages", folder, check=False)
        found = re.search(r"messages=(\d+)", result.stdout.decode(errors="replace"))
        return int(found[1]) if result.returncode == 0 and found else -1

    def _doveadm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        _, doveadm = _binaries()
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [doveadm, "-c", str(self.config), *argv], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if check and result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"doveadm {argv[0]} failed ({result.returncode}): {message}")
        return result

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.directory / "dovecot.stderr", self.log):
            if path.exists():
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{path.name}: {text[-2000:]}")
        return "; ".join(parts) or "no output"


def _lmtp(lmtp_port: int | None) -> str:
    if lmtp_port is None:
        return ""
    return f"""
# LMTP for an MTA on loopback: RCPT TO <{USERNAME}@any.domain> is the user {USERNAME}.
postmaster_address = postmaster@gateway-test.invalid
protocol lmtp {{
  auth_username_format = %Ln
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {lmtp_port}
  }}
}}
"""


@dataclass(frozen=True)
class OAuth2Passdb:
    """Logins by OAuth 2.0 token only (XOAUTH2, OAUTHBEARER): Dovecot's `oauth2` passdb asks an introspection
    endpoint (RFC 7662, token POSTed) whether each token is active and whose it is; passwords are refused."""

    introspection_url: str
    ca_file: Path | None = None  # the CA of an https introspection endpoint
    username_attribute: str = "username"

    def config(self) -> str:
        ca = f"tls_ca_cert_file = {self.ca_file}\n" if self.ca_file else ""
        return (
            f"introspection_mode = post\nintrospection_url = {self.introspection_url}\n"
            f"username_attribute = {self.username_attribute}\nactive_attribute = active\nactive_value = true\n"
            f"force_introspection = yes\ntimeout_msecs = 10000\n{ca}"
        )


def _passdb(directory: Path, oauth2: OAuth2Passdb | None) -> str:
    if oauth2 is None:
        return f"""auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {directory}/users
}}"""
    (directory / "oauth2.conf.ext").write_text(oauth2.config())
    return f"""# Tokens only: no mechanism that carries a password is offered, and the only passdb checks tokens.
auth_mechanisms = xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {directory}/oauth2.conf.ext
}}"""


def _config(
    directory: Path,
    port: int,
    mail_user: pwd.struct_passwd,
    as_root: bool,
    *,
    capabilities: str | None = None,
    lmtp_port: int | None = None,
    oauth2: OAuth2Passdb | None = None,
    sasl_port: int | None = None,
) -> str:
    home = directory / "mail"
    if as_root:
        # Pytest's temporary directories are 0700 root: processes that have dropped to the dovecot user cannot
        # reach them by absolute path. So mail processes chroot into the mail directory (done as root, before
        # dropping privileges), auth stays root to read the passwd-file, and login processes use base_dir's
        # relative sockets.
        privileges = f"""
default_internal_user = dovecot
default_login_user = dovenull
valid_chroot_dirs = {home}
"""
        userdb_home = f"{home}/./{USERNAME}"
    else:
        # Rootless Dovecot: every service runs as the user running the tests, and nothing can chroot.
        group = mail_user.pw_gid
        privileges = f"""
default_internal_user = {mail_user.pw_name}
default_internal_group = {grp.getgrgid(group).gr_name}
default_login_user = {mail_user.pw_name}
"""
        userdb_home = f"{home}/{USERNAME}"
    auth_user = "user = root" if as_root else ""
    # Dovecot's SASL for an MTA's submission port (Postfix: smtpd_sasl_type = dovecot, smtpd_sasl_path =
    # inet:127.0.0.1:PORT): a TCP listener, which the postfix user reaches where it could not reach a socket here.
    sasl = f"inet_listener sasl {{\n    address = {HOST}\n    port = {sasl_port}\n  }}" if sasl_port else ""
    # A static userdb asks the passdb whether a user exists (for doveadm); a passdb of tokens cannot say.
    all_users = " allow_all_users=yes" if oauth2 else ""
    return f"""# Written by gateway/dev/dovecot.py for one test server: loopback only, no TLS, one user.
instance_name = gateway-test-{port}
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
listen = {HOST}
protocols = imap{" lmtp" if lmtp_port else ""}
ssl = no
disable_plaintext_auth = no
# Tests that try a wrong password should not wait for the anti-brute-force delay.
auth_failure_delay = 0
first_valid_uid = {mail_user.pw_uid}
last_valid_uid = 0
first_valid_gid = {mail_user.pw_gid}
last_valid_gid = 0
mail_location = maildir:~/Maildir
# inotify wakes IDLE at once; this is only the fallback where inotify is unavailable.
mailbox_idle_check_interval = 1 secs
{privileges}
{_passdb(directory, oauth2)}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={userdb_home}{all_users}
}}
protocol imap {{
  # The default of 10 is easy to reach when each test opens its own connections and reconnects.
  mail_max_userip_connections = 1000
  {f"imap_capability = {capabilities}" if capabilities else ""}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  {auth_user}
  {sasl}
}}
service anvil {{
  chroot =
  # Dovecot's documented way to turn off the auth penalty, which otherwise doubles the wait after each
  # failed login from 127.0.0.1 (4.5 s by the second): tests of wrong passwords would crawl.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{_lmtp(lmtp_port)}"""


def start_dovecot(
    directory: Path,
    capabilities: str | None = None,
    *,
    lmtp: bool = False,
    oauth2: OAuth2Passdb | None = None,
    sasl: bool = False,
) -> ImapServer:
    """Write a config under `directory` and start Dovecot on a free loopback port (and LMTP on another, if asked:
    then, run as root, `directory` must be reachable by the dovecot user); with `oauth2`, logins by OAuth token
    only; with `sasl`, its authentication for an MTA on another port (`sasl_port`).

    Raises DovecotUnavailable (a RuntimeError) when Dovecot is not installed, RuntimeError when it will not start.
    """
    _binaries()
    if lmtp and not any(Path(path).exists() for path in _LMTP_BINARIES):
        raise DovecotUnavailable("Dovecot's LMTP server is not installed: apt-get install dovecot-lmtpd")
    directory = directory.resolve()
    if not _SAFE_PATH.fullmatch(str(directory)):
        raise RuntimeError(f"Dovecot's config cannot hold the path {directory}: use letters, digits and ./_+- only")
    if len(str(directory / "run")) > _MAX_BASE_DIR:
        raise RuntimeError(f"{directory} is too long for Dovecot's unix sockets: use a shorter directory")
    as_root = os.geteuid() == 0
    if lmtp and as_root:
        # LMTP does not chroot like imap: it writes by absolute path as the mail user, who must reach the folder.
        closed = next((p for p in directory.parents if p.exists() and not p.stat().st_mode & 0o001), None)
        if closed is not None:
            raise RuntimeError(
                f"Dovecot's LMTP delivers as the dovecot user, who cannot enter {closed}: put the server in a "
                "folder whose parents others may enter (pytest's own temporary folders are 0700)"
            )
    try:
        mail_user = pwd.getpwnam("dovecot") if as_root else pwd.getpwuid(os.geteuid())
    except KeyError as exc:
        raise RuntimeError("the `dovecot` system user is missing: reinstall dovecot-core") from exc

    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "mail" / USERNAME
    home.mkdir(parents=True, exist_ok=True)
    if as_root:
        # Mail is read and written by the dovecot user; imap refuses to run mail processes as root.
        os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
    home.chmod(0o700)
    users = directory / "users"
    users.write_text(f"{USERNAME}:{{PLAIN}}{PASSWORD}::::::\n")
    users.chmod(0o600)

    # The port is free when probed but another process may take it before Dovecot binds: try a few.
    last_error: RuntimeError | None = None
    for _ in range(5):
        port = free_port()
        lmtp_port = free_port() if lmtp else None
        sasl_port = free_port() if sasl else None
        config = _config(
            directory, port, mail_user, as_root,
            capabilities=capabilities, lmtp_port=lmtp_port, oauth2=oauth2, sasl_port=sasl_port,
        )  # fmt: skip
        (directory / "dovecot.conf").write_text(config)
        server = ImapServer(HOST, port, USERNAME, PASSWORD, directory, lmtp_port=lmtp_port, sasl_port=sasl_port)
        try:
            server.start()
        except RuntimeError as exc:
            last_error = exc
            if "Address already in use" not in str(exc):
                raise
            continue
        return server
    raise RuntimeError(f"Dovecot found no free port: {last_error}")
