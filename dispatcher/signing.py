"""Standard Webhooks signatures (https://www.standardwebhooks.com).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` and the header value is
``v1,<base64 of HMAC-SHA256>``. A secret is ``whsec_<base64 key>``; a secret without that
prefix is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a secret; ValueError if a `whsec_` secret is not base64 or is empty."""
    if secret.startswith(SECRET_PREFIX):
        text = secret[len(SECRET_PREFIX) :].rstrip("=")
        text += "=" * (-len(text) % 4)  # unpadded base64 is common in the wild
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("the part after 'whsec_' is not valid base64") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the secret is empty")
    return key


class Signer:
    """Signs webhook requests with one secret. The key schedule is computed once; each
    signature copies the keyed HMAC state, which is cheaper than keying anew."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: str) -> None:
        self._keyed = hmac.new(decode_secret(secret), digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "Signer(***)"  # never show the key

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` header value for one request."""
        mac = self._keyed.copy()
        mac.update(f"{msg_id}.{timestamp}.".encode())
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode("ascii")
