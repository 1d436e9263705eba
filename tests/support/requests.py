"""The mail an authority sends the gateway, as its client makes it: plain, PGP/MIME-signed, or passed by our border."""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess

from tests.support.addresses import GATEWAY_ADDRESS, POLICE_ADDRESS
from tests.support.keys import AuthorityKeys

BORDER = "mx.hmci.example"
DOMAIN = POLICE_ADDRESS.rpartition("@")[2]
REQUEST = "Request: disclosure\r\nPurpose: Safeguarding children in our force area\r\n"
FROM_POLICE = f"From: West Mercia Police <{POLICE_ADDRESS}>\nTo: {GATEWAY_ADDRESS}\nSubject: request\n"


def plain(headers: str, body: str = REQUEST) -> bytes:
    return (headers.replace("\n", "\r\n") + "\r\n" + body).encode()


# The same bytes as plain(), under the name the impostor and limit tests read best with.
unsigned = plain


_NONCES = itertools.count()


def signed_message(
    keys: AuthorityKeys,
    signer: str,
    *,
    body: str = REQUEST,
    alter: bool = False,
    headers: str = FROM_POLICE,
    at: dt.datetime | None = None,
) -> bytes:
    """A multipart/signed message as a mail client makes it: the first part signed exactly as sent (at `at`)."""
    first = f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{body}'
    faked = ["--faked-system-time", f"{at.astimezone(dt.UTC):%Y%m%dT%H%M%S}"] if at else []
    # Each message signed anew, as a client does: two of the same text in one second would otherwise carry the
    # very same (deterministic Ed25519) signature, which the gateway rightly takes for a replay.
    nonce = ["--sig-notation", f"nonce@tests.example={next(_NONCES)}"]
    signature = subprocess.run(
        ["gpg", "--homedir", str(keys.home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *faked,
         *nonce, "--armor", "--detach-sign", "--digest-algo", "SHA256", "--local-user", signer],
        input=first.encode(), capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    if alter:
        first = first.replace("our force area", "all of England")
    boundary = "----=_signed_7f3a"
    head = headers.replace("\n", "\r\n") + (
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/signed; micalg=pgp-sha256; "
        f'protocol="application/pgp-signature"; boundary="{boundary}"\r\n'
    )
    return (
        f"{head}\r\nThis is an OpenPGP/MIME signed message.\r\n--{boundary}\r\n{first}\r\n--{boundary}\r\n"
        f'Content-Type: application/pgp-signature; name="signature.asc"\r\n\r\n{signature}\r\n--{boundary}--\r\n'
    ).encode()


def request_from_police(
    keys: AuthorityKeys, body: str = REQUEST, message_id: str = "<r1@westmercia.police.example>"
) -> bytes:
    return signed_message(keys, keys.police.fingerprint, body=body, headers=FROM_POLICE + f"Message-ID: {message_id}\n")


def police_says(keys: AuthorityKeys, body: str, message_id: str, at: dt.datetime | None = None) -> bytes:
    headers = FROM_POLICE + f"Message-ID: <{message_id}@westmercia.police.example>\n"
    return signed_message(keys, keys.police.fingerprint, body=body, headers=headers, at=at)


def dmarc_request(message_id: bytes, body: str, extra: bytes = b"") -> bytes:
    return (
        f"Authentication-Results: {BORDER}; dmarc=pass header.from={DOMAIN}\r\n".encode()
        + FROM_POLICE.replace("\n", "\r\n").encode()
        + b"Message-ID: " + message_id + b"\r\n" + extra + b"\r\n" + body.encode()
    )  # fmt: skip
