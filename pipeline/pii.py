"""PII mode: personal ids are replaced by a keyed hash inside the worker, free text is dropped.

The pseudonym of an id is the first 16 bytes of HMAC-SHA256(key, UTF-8 bytes of the id), as 32
lowercase hex characters::

    hmac.new(key, b"cust-000042", hashlib.sha256).hexdigest()[:32]

The same id always gets the same pseudonym, so dedup, funnels and every per-customer state still
join; without the key, a guessed id can't be turned into its pseudonym. The worker applies it to
each event right after validation, so Kafka keys and partitions (chosen by the producers from the
raw id) are unchanged, and nothing written to ClickHouse, /metrics or an output topic holds a raw id.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Optional

from pipeline.settings import PII_MIN_KEY_BYTES, SecuritySettings

# The personal ids of each source's events (the CRM account id is the customer's account).
ID_FIELDS = {
    "web": ("customer_id", "anonymous_id", "session_id"),
    "chatbot": ("customer_id", "session_id"),
    "crm": ("customer_id", "session_id", "account_id"),
    "complaints": ("customer_id", "session_id"),
}


class _HmacSha256:
    """The pseudonym: HMAC-SHA256 (RFC 2104), the key's inner and outer SHA-256 states computed once.
    Equal to ``hmac.digest(key, identifier, "sha256")[:16].hex()`` at a third of its cost per id
    (that one hashes the key blocks again on every call)."""

    def __init__(self, key: bytes):
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, identifier: bytes) -> str:
        inner, outer = self.inner.copy(), self.outer.copy()
        inner.update(identifier)
        outer.update(inner.digest())
        return outer.digest()[:16].hex()


class Pseudonymiser:
    """Pure and per event; the pseudonyms of the ``cache_size`` most recently seen ids are cached
    (an LRU), so a returning customer costs a dict lookup instead of an HMAC."""

    def __init__(self, key: bytes, drop_text: bool = True, cache_size: int = 100_000):
        if len(key) < PII_MIN_KEY_BYTES:
            raise ValueError(f"the PII key must have at least {PII_MIN_KEY_BYTES} bytes, got {len(key)}")
        self.drop_text = drop_text
        self._of_bytes = _HmacSha256(key)
        self.of = lru_cache(maxsize=cache_size)(self._of_text)

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Optional["Pseudonymiser"]:
        """The configured pseudonymiser, or None when PII mode is off (no key)."""
        key = settings.pii_secret()
        return None if key is None else cls(key, settings.pii_drop_text, settings.pii_cache_size)

    def _of_text(self, identifier: str) -> str:
        return self._of_bytes(identifier.encode("utf-8"))

    def apply(self, source: str, event: dict) -> dict:
        """A copy of ``event`` with its ids pseudonymised (blank ones stay blank) and, with
        ``drop_text``, the chatbot text and survey comment set to null. ``event`` is not changed."""
        out = dict(event)
        for name in ID_FIELDS[source]:
            value = out.get(name)
            if value:
                out[name] = self.of(value)
        if self.drop_text:
            if out.get("text") is not None:
                out["text"] = None
            survey = out.get("survey")
            if survey is not None and survey.get("comment") is not None:
                out["survey"] = dict(survey, comment=None)
        return out

    def dead_letter(self, source: str, key: Optional[bytes], event: Optional[dict],
                    error: str) -> tuple[Optional[bytes], Optional[dict], str]:
        """What a dead letter keeps in PII mode: the Kafka key pseudonymised (its raw bytes hashed, so a
        UTF-8 key gets the pseudonym of its id), the decoded event pseudonymised (None if undecodable:
        the caller keeps no raw bytes), and the error text with any raw id of either replaced."""
        raw_ids = [key.decode("utf-8", "replace")] if key else []
        if event is not None:
            raw_ids += [event[name] for name in ID_FIELDS[source] if event.get(name)]
            event = self.apply(source, event)
        for raw in sorted(set(raw_ids), key=len, reverse=True):  # longest first: an id may contain another
            error = error.replace(raw, self.of(raw))
        return (self._of_bytes(key).encode() if key else key), event, error
