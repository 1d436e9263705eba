"""S/MIME at the edge (RFC 8551): certificates read and checked for pinning, and CMS signed, encrypted,
verified and decrypted by openssl, bounded like gpg."""

from gateway.smime.certs import (
    CertificateProblem,
    CertInfo,
    load_key,
    make_key,
    make_self_signed,
    make_self_signed_at,
    read_certificate,
    write_csr,
)
from gateway.smime.cms import (
    CONTENT_CIPHER,
    OpensslUnavailable,
    SmimeLimitExceeded,
    SmimeSignature,
    decrypt,
    sign_and_encrypt,
    verify,
)
from gateway.smime.mime import certificates_in_signed_message

__all__ = [
    "CONTENT_CIPHER",
    "CertInfo",
    "CertificateProblem",
    "OpensslUnavailable",
    "SmimeLimitExceeded",
    "SmimeSignature",
    "certificates_in_signed_message",
    "decrypt",
    "load_key",
    "make_key",
    "make_self_signed",
    "make_self_signed_at",
    "read_certificate",
    "sign_and_encrypt",
    "verify",
    "write_csr",
]
