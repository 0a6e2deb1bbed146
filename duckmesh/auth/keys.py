"""API keys: random secrets shown once, stored only as SHA-256 hashes.

A key looks like ``dmk_<43 url-safe characters>``. Its id is the first 16 hex
digits of its hash, so a presented key is found by id and then compared in
constant time against the stored hash; the plaintext never reaches Postgres
or the logs. (SHA-256 is enough: keys carry 256 random bits, there is
nothing to brute-force.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "dmk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for(key_hash: str) -> str:
    return key_hash[:16]


def matches(stored_hash: str, presented_hash: str) -> bool:
    return hmac.compare_digest(stored_hash.encode(), presented_hash.encode())
