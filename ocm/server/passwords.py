"""
Room passwords, kept only as salted scrypt hashes (PROTOCOL §5).

scrypt is slow on purpose (tens of milliseconds), so the daemon runs it off
the reactor thread; these functions are plain and synchronous.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

# n=2**14, r=8: 16 MiB and about 40 ms a hash on one core here; the OWASP
# minimum for interactive logins. Stored with each hash so they can change.
N, R, P = 2**14, 8, 1
SALT_BYTES = 16
_MAXMEM = 64 * 1024 * 1024


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes
    n: int = N
    r: int = R
    p: int = P

    def __repr__(self) -> str:
        return "PasswordHash(<hidden>)"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32,
    )


def hash_password(password: str) -> PasswordHash:
    salt = os.urandom(SALT_BYTES)
    return PasswordHash(salt, _scrypt(password, salt, N, R, P))


def verify_password(password: str, stored: PasswordHash) -> bool:
    candidate = _scrypt(password, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(candidate, stored.digest)
