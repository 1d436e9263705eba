"""A private, real Postfix on loopback for tests: its own main.cf, master.cf, queue and data folders, started and
stopped by the test; never the machine's /etc/postfix setup or its service.

    postfix = start_postfix(
        directory,                                   # empty; reachable by the postfix user (private_directory())
        hostname="mx.hmci.example",                  # myhostname: what a milter names itself after
        routes={"hmci.example": "lmtp:inet:127.0.0.1:2424", "council.example": "smtp:[127.0.0.1]:2525"},
        accept_for=("hmci.example",),                # the MX port takes mail for these from anyone
        milter="inet:127.0.0.1:11332",               # optional: on the MX port only (Rspamd's proxy, say)
        submission=Submission(cert, key),            # optional: a submission port that demands STARTTLS
    )
    ... smtplib.SMTP(postfix.host, postfix.mx_port) ... postfix.submission_port ...
    postfix.stop()                                   # always, in a finally; then remove the directory

- `mx_port`: plain SMTP as from the Internet. Mail is accepted only for `accept_for` domains (any sender,
  no login), passes `milter` if given (a milter that cannot be reached makes Postfix answer 451: fail closed).
- `submission_port` (with `submission`): STARTTLS before anything else (`smtpd_tls_security_level = encrypt`, so a
  plaintext MAIL or AUTH gets "530 Must issue a STARTTLS command first"), TLS 1.2 or newer, the certificate
  and key given. Without `sasl_path`, clients from 127.0.0.1 may send anywhere `routes` reach. With `sasl_path`
  (Dovecot's auth service: `inet:127.0.0.1:PORT` for a Dovecot with `service auth { inet_listener sasl {
  address = 127.0.0.1  port = PORT } }`, or an absolute unix socket path the postfix user can reach), Postfix
  offers AUTH only after STARTTLS (`smtpd_sasl_type = dovecot`, `smtpd_tls_auth_only`), and
  only an authenticated client may send: a client that did not log in is refused with 554.
- Delivery: each domain (or full address) in `routes` goes to its Postfix transport (`lmtp:inet:HOST:PORT`,
  `smtp:[127.0.0.1]:PORT`); mail for any other domain bounces at once, so nothing ever leaves the machine.
  Postfix does no DNS lookups: peer names are not looked up, and routes must use IP addresses.
- `log()`: Postfix's own log (maillog_file), the first place to look when mail does not arrive.
- `extra`: further main.cf parameters, given last (they win).

Postfix must be installed (scripts/test does it, with its service kept from starting) and the test must run as
root: its master runs as root and its daemons as the `postfix` user. Otherwise ServerUnavailable.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.foreground import (
    HOST,
    STOP_TIMEOUT,
    Foreground,
    ServerUnavailable,
    accepts,
    binary,
    free_port,
    greets,
)

INSTALL_HINT = "scripts/test installs it (Debian package postfix, its service kept from starting)"
_SAFE = re.compile(r"[A-Za-z0-9_./:@+\[\]-]+")  # what goes into main.cf and master.cf unquoted


@dataclass(frozen=True)
class Submission:
    """The submission port's TLS certificate (PEM, its chain after it) and key, and optionally Dovecot SASL."""

    certificate: Path
    key: Path
    sasl_path: str | None = None  # smtpd_sasl_path for smtpd_sasl_type = dovecot; None: no AUTH, 127.0.0.1 sends


@dataclass(frozen=True)
class Postfix:
    host: str
    mx_port: int
    submission_port: int | None
    directory: Path
    _process: Foreground = field(repr=False, compare=False)

    def stop(self) -> None:
        """Stop this instance only (its master and every daemon it started); the folder is the caller's."""
        # The master makes a session of its own (so not in the group Foreground signals), and on SIGTERM takes
        # its daemons down with it: it is signalled first, by the pid it recorded.
        master = _master_pid(self.directory)
        if master is not None:
            _signal_group(master, signal.SIGTERM)
        self._process.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        while master is not None and not _gone(master):
            if time.monotonic() > deadline:
                _signal_group(master, signal.SIGKILL)
                break
            time.sleep(0.05)
        ports = [port for port in (self.mx_port, self.submission_port) if port is not None]
        while any(accepts(port) for port in ports):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix in {self.directory} still accepts connections after it was stopped")
            time.sleep(0.05)

    def log(self) -> str:
        """Postfix's log so far."""
        path = self.directory / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


def _master_pid(directory: Path) -> int | None:
    try:
        return int((directory / "queue" / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _signal_group(group: int, signo: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signo)


def _postfix() -> str:
    if os.geteuid() != 0:
        raise ServerUnavailable("a test Postfix needs root: its master runs as root, its daemons as postfix")
    return binary("postfix", "/usr/sbin/postfix", hint=INSTALL_HINT)


def _mail_owner() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postfix")
    except KeyError:
        raise ServerUnavailable(f"the postfix user is missing: {INSTALL_HINT}") from None


def _safe(*values: str) -> None:
    for value in values:
        if not _SAFE.fullmatch(value):
            raise ValueError(f"{value!r} cannot go into Postfix's configuration as it is")


def _main_cf(
    directory: Path,
    *,
    hostname: str,
    routes: Mapping[str, str],
    accept_for: Sequence[str],
    submission: Submission | None,
    extra: Mapping[str, str],
) -> str:
    transports = ", ".join(f"{domain}={transport}" for domain, transport in routes.items())
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": f"{directory}/queue",
        "data_directory": f"{directory}/data",
        "maillog_file": f"{directory}/maillog",
        "maillog_file_prefixes": str(directory),
        "myhostname": hostname,
        "mydomain": hostname.partition(".")[2] or hostname,
        "myorigin": "$myhostname",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.1/32",
        # No local delivery and no outside world: only the routes, every other domain bounces.
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relay_domains": " ".join(accept_for),
        "transport_maps": f"inline:{{ {transports} }}",
        "default_transport": "error:5.7.1 a test Postfix sends mail nowhere but its routes",
        "relay_transport": "error:5.7.1 a test Postfix sends mail nowhere but its routes",
        "local_transport": "error:5.1.1 a test Postfix delivers nothing locally",
        # Nothing may ask the machine's resolver: routes name IP addresses, and peers are not looked up.
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "lmtp_host_lookup": "native",
        "smtpd_peername_lookup": "no",
        "biff": "no",
        "append_dot_mydomain": "no",
        "smtpd_banner": "$myhostname ESMTP",
        "milter_default_action": "tempfail",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtp_tls_security_level": "none",
        "lmtp_tls_security_level": "none",
        # Mail queued after a failed delivery is tried again soon: a test waits seconds, not an hour.
        "queue_run_delay": "2s",
        "minimal_backoff_time": "2s",
        "maximal_backoff_time": "4s",
    }
    if submission is not None:
        settings |= {
            "smtpd_tls_cert_file": str(submission.certificate),
            "smtpd_tls_key_file": str(submission.key),
            "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            "smtpd_tls_protocols": ">=TLSv1.2",
            "smtpd_tls_loglevel": "1",
        }
    settings |= extra
    return "# Written by tests/support/postfix.py for one test instance.\n" + "".join(
        f"{name} = {value}\n" for name, value in settings.items()
    )


def _master_cf(mx_port: int, submission_port: int | None, milter: str | None, submission: Submission | None) -> str:
    # service type private unpriv chroot wakeup maxproc command: nothing chrooted, as the private folders
    # are not laid out for it.
    mx = f"{HOST}:{mx_port} inet n - n - - smtpd\n  -o syslog_name=postfix/mx\n"
    if milter:
        mx += f"  -o smtpd_milters={milter}\n"
    lines = [mx]
    if submission is not None and submission_port is not None:
        entry = (
            f"{HOST}:{submission_port} inet n - n - - smtpd\n  -o syslog_name=postfix/submission\n"
            "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_milters=\n"
        )
        if submission.sasl_path:
            entry += (
                "  -o smtpd_sasl_auth_enable=yes\n  -o smtpd_sasl_type=dovecot\n"
                f"  -o smtpd_sasl_path={submission.sasl_path}\n  -o smtpd_tls_auth_only=yes\n"
                "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
                "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
            )
        else:
            entry += "  -o smtpd_relay_restrictions=permit_mynetworks,reject\n"
        lines.append(entry)
    lines.append(
        """pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
    )
    return "# Written by tests/support/postfix.py for one test instance.\n" + "".join(lines)


def start_postfix(
    directory: Path,
    *,
    hostname: str,
    routes: Mapping[str, str],
    accept_for: Sequence[str] = (),
    milter: str | None = None,
    submission: Submission | None = None,
    extra: Mapping[str, str] | None = None,
) -> Postfix:
    """Write main.cf and master.cf under `directory` and start Postfix on free loopback ports (see the module's
    docstring). Raises ServerUnavailable when Postfix is missing or cannot run here, RuntimeError when it
    will not start."""
    postfix = _postfix()
    directory = directory.resolve()
    extra = extra or {}
    _safe(str(directory), hostname, *routes, *routes.values(), *accept_for, *extra)
    _safe(*(value for value in (milter, submission and submission.sasl_path) if value))
    if submission is not None:
        _safe(str(submission.certificate), str(submission.key))
    directory.mkdir(parents=True, exist_ok=True)
    # The queue's top folder belongs to root (`postfix check`, run by start, makes what is below, owned by
    # postfix); the data folder (the master's lock, TLS state) belongs to postfix.
    for folder in ("config", "queue", "data"):
        (directory / folder).mkdir(mode=0o755, exist_ok=True)
    owner = _mail_owner()
    os.chown(directory / "data", owner.pw_uid, owner.pw_gid)
    config = directory / "config"

    last_error: RuntimeError | None = None
    for _ in range(5):  # a port free when probed may be taken before Postfix binds it
        mx_port = free_port()
        submission_port = free_port() if submission is not None else None
        (config / "main.cf").write_text(
            _main_cf(
                directory, hostname=hostname, routes=routes, accept_for=accept_for, submission=submission, extra=extra
            )
        )
        (config / "master.cf").write_text(_master_cf(mx_port, submission_port, milter, submission))
        process = Foreground("Postfix", directory / "postfix.out")

        def ready(mx: int = mx_port, sub: int | None = submission_port) -> bool:
            return greets(mx, b"220") and (sub is None or greets(sub, b"220"))

        try:
            # start-fg: the master stays our child (so it is reaped, and its group signalled, even when the
            # test fails) after the same checks `postfix start` makes.
            process.start([postfix, "-c", str(config), "start-fg"], ready)
        except RuntimeError as exc:
            last_error = RuntimeError(f"{exc}; maillog: {_tail(directory / 'maillog')}")
            if "Address already in use" in str(last_error):
                continue
            raise last_error from None
        return Postfix(HOST, mx_port, submission_port, directory, process)
    raise RuntimeError(f"Postfix found no free ports: {last_error}")


def _tail(path: Path, limit: int = 3000) -> str:
    return path.read_text(errors="replace")[-limit:] if path.exists() else "none"
