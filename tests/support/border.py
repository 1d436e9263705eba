"""A real border on loopback, as a site runs one in front of the gateway's mailbox: Postfix with Rspamd as its milter
(SPF, DKIM and DMARC checked, Authentication-Results written), Unbound serving the sending domain's records, and
Dovecot's LMTP taking the mail into the mailbox the gateway watches; replies leave through Postfix's submission
port, STARTTLS required, with a certificate from a test CA. Every process is stopped and every folder removed
when the block ends, however it ends."""

from __future__ import annotations

import base64
import contextlib
import shutil
import smtplib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.dev.dovecot import DovecotUnavailable, ImapServer, start_dovecot
from tests.support.dns import Dns, start_dns, txt
from tests.support.foreground import HOST, ServerUnavailable, private_directory, skip_unavailable
from tests.support.postfix import Postfix, Submission, start_postfix
from tests.support.rspamd import Rspamd, start_rspamd
from tests.support.tls import TestCa, make_ca


@dataclass(frozen=True)
class DkimKey:
    """A sending domain's DKIM key: the test signs with it and publishes its public half at selector._domainkey."""

    domain: str
    selector: str
    private_pem: bytes

    @classmethod
    def make(cls, domain: str, selector: str) -> DkimKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        return cls(domain, selector, pem)

    def record(self) -> str:
        """The DNS TXT record (RFC 6376 3.6.1) that publishes the public key."""
        key = serialization.load_pem_private_key(self.private_pem, password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return txt(
            f"{self.selector}._domainkey.{self.domain}.", f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
        )

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature on top, as the sending domain's outbound mail server adds it (dkimpy,
        an implementation apart from the Rspamd that verifies it)."""
        signature = dkim.sign(
            message,
            selector=self.selector.encode(),
            domain=self.domain.encode(),
            privkey=self.private_pem,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return bytes(signature) + message


@dataclass(frozen=True)
class Border:
    hostname: str  # Postfix's myhostname, which Rspamd writes as the authserv-id of its Authentication-Results
    postfix: Postfix
    rspamd: Rspamd
    dns: Dns
    mailbox: ImapServer  # the gateway's mailbox, which Postfix delivers into over LMTP
    ca: TestCa  # the CA of the submission port's certificate: the gateway's [smtp] ca_file
    directory: Path

    def send(self, raw: bytes, mail_from: str, rcpt_to: str, *, source: str = HOST) -> None:
        """Deliver to the border's MX port from `source` (a loopback address), as another domain's MTA would."""
        with smtplib.SMTP(HOST, self.postfix.mx_port, source_address=(source, 0), timeout=30) as client:
            client.ehlo(f"mta.{mail_from.rpartition('@')[2]}")
            client.sendmail(mail_from, [rcpt_to], raw)


def sender_zone(domain: str, key: DkimKey) -> dict[str, list[str]]:
    """A sending domain's SPF (only 127.0.0.1 may send for it), DKIM key and DMARC policy (reject)."""
    return {
        f"{domain}.": [
            txt(f"{domain}.", "v=spf1 ip4:127.0.0.1 -all"),
            txt(f"_dmarc.{domain}.", "v=DMARC1; p=reject; adkim=s; aspf=s"),
            key.record(),
        ]
    }


@contextlib.contextmanager
def running_border(
    *,
    hostname: str,
    zones: Mapping[str, list[str]],
    mailbox_address: str,
    outside: Mapping[str, int],
) -> Iterator[Border]:
    """Start the border: mail for `mailbox_address`'s domain is accepted from anyone on the MX port and, that
    address, delivered into a fresh Dovecot's mailbox; mail submitted for each domain or address in `outside`
    goes to the SMTP server on that loopback port (the world outside, in the test). Skips the test (fails it
    under GATEWAY_TEST_REQUIRE_BORDER) when a server is not installed."""
    directory = private_directory("gw-border-")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, ignore_errors=True)  # last: after every server has stopped
        try:
            dns = start_dns(directory / "dns", zones)
            stack.callback(dns.stop)
            rspamd = start_rspamd(directory / "rspamd", nameserver=dns.nameserver)
            stack.callback(rspamd.stop)
            mailbox = start_dovecot(directory / "dovecot", lmtp=True)
            stack.callback(mailbox.stop)
            ca = make_ca(directory / "ca", "Border Test CA")
            served = ca.issue(hostname, ips=(HOST,))
            domain = mailbox_address.rpartition("@")[2]
            routes = {domain: f"lmtp:inet:{HOST}:{mailbox.lmtp_port}"}
            routes |= {where: f"smtp:[{HOST}]:{port}" for where, port in outside.items()}
            postfix = start_postfix(
                directory / "postfix",
                hostname=hostname,
                routes=routes,
                accept_for=(domain,),
                milter=rspamd.milter,
                submission=Submission(served.certificate, served.key),
                # The mailbox's one user takes the gateway's address (the envelope only: headers stay as sent).
                extra={"virtual_alias_maps": f"inline:{{ {mailbox_address}={mailbox.username}@{domain} }}"},
            )
            stack.callback(postfix.stop)
        except (ServerUnavailable, DovecotUnavailable) as exc:
            skip_unavailable(f"the real-border test needs Postfix, Rspamd, Unbound and Dovecot's LMTP: {exc}")
            raise  # not reached: skip_unavailable raises
        yield Border(hostname, postfix, rspamd, dns, mailbox, ca, directory)
