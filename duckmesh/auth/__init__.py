"""Authentication and authorisation: API keys, roles, deny by default.

Owns key generation and hashing; the catalog stores only hashes. Roles:
``ingest_writer``, ``query_reader``, ``table_admin``, ``ops_admin``.
"""

from duckmesh.auth.keys import KEY_PREFIX, generate_key, hash_key, key_id_for, matches

__all__ = ["KEY_PREFIX", "generate_key", "hash_key", "key_id_for", "matches"]
