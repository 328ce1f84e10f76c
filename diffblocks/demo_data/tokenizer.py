"""A CLIP BPE tokenizer (vocab.json + merges.txt) in which every word of the demo captions is one token.

CLIP's byte-pair encoding splits a word into characters (the last one carrying `</w>`) and then repeatedly
merges the adjacent pair with the lowest merge rank. `word_merges` grows a merge list until every given word
comes out as a single token: for a word that is still split it appends the merge of its first two pieces, which
applies only after every earlier merge, so the earlier segmentations stay as they were. All lowercase letters
are in the vocabulary, so any lowercase prompt still tokenizes (words outside the captions as several pieces).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

__all__ = ["bpe", "word_merges", "write_clip_tokenizer"]

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces CLIP's BPE makes of `word` with the merge ranks `ranks`."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = {(a, b) for a, b in zip(pieces, pieces[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges (in rank order) that make each of `words` a single token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    changed = True
    while changed:
        changed = False
        for word in words:
            pieces = bpe(word, ranks)
            if len(pieces) > 1:
                ranks[(pieces[0], pieces[1])] = len(merges)
                merges.append((pieces[0], pieces[1]))
                changed = True
    return merges


def write_clip_tokenizer(directory: str | Path, words: list[str], model_max_length: int) -> Path:
    """Write a CLIPTokenizer folder whose vocabulary has every letter and every word of `words` as one token."""
    from transformers import CLIPTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    merges = word_merges(sorted(set(words)))
    tokens = list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += list(SPECIAL)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=model_max_length)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"demo tokenizer: {word!r} became {len(ids)} tokens {ids}; expected one")
    tokenizer.save_pretrained(str(out))
    return out
