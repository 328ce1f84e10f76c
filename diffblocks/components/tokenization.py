"""Calling a shared tokenizer from several threads.

A `transformers` tokenizer backed by the `tokenizers` library keeps its padding and truncation settings on the
backend object: each call first sets them, then encodes. Two threads tokenizing with different settings (a padded
call and `tokenize()` or a `padding="longest"` check) can interleave, and one of them then encodes with the
other's settings (e.g. unpadded ids of 9 tokens instead of 77: different embeddings, a different image). Every
tokenizer call of the pipelines goes through `tokenize` / `tokenizer_lock`, which take one re-entrant lock per
tokenizer object, so concurrent calls of one pipeline take turns for the (microseconds-long) tokenization only.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["tokenize", "tokenizer_lock"]

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_BY_ID: dict[int, threading.RLock] = {}  # tokenizers that cannot be weakly referenced
_GUARD = threading.Lock()


def tokenizer_lock(tokenizer: Any) -> threading.RLock:
    """The lock to hold while calling `tokenizer` (one per tokenizer object, re-entrant)."""
    with _GUARD:
        try:
            lock = _LOCKS.get(tokenizer)
            if lock is None:
                lock = _LOCKS[tokenizer] = threading.RLock()
        except TypeError:
            lock = _LOCKS_BY_ID.setdefault(id(tokenizer), threading.RLock())
    return lock


def tokenize(tokenizer: Any, text: Any, **kwargs: Any) -> Any:
    """`tokenizer(text, **kwargs)` under the tokenizer's lock."""
    with tokenizer_lock(tokenizer):
        return tokenizer(text, **kwargs)
