"""Textual inversion: learned token embeddings added to a CLIP tokenizer + text encoder pair.

Formats read (as the reference's loader does, plus ``emb_params``):

* diffusers: ``{token: tensor}`` (one key; ``learned_embeds.safetensors`` / ``.bin``);
* A1111: ``{"string_to_param": {"*": tensor}, "name": token, ...}`` and ``{"emb_params": tensor}``;
* SDXL files: ``{"clip_l": tensor, "clip_g": tensor}``: ``clip_l`` goes to the first encoder, ``clip_g`` to the
  second (or pass one tensor with an explicit ``tokenizer`` / ``text_encoder``, as with the reference).

A tensor of shape ``(n, dim)`` is an ``n``-vector token: it is added as ``token``, ``token_1`` ... ``token_{n-1}``
and prompts naming ``token`` are expanded to all of them (`expand_prompts`, called by the text-encoder steps).

`unload_textual_inversion` restores the tokenizer's state from before the first load (kept as a snapshot) and
shrinks the embedding matrix back, then re-adds the tokens that are kept.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from ..tokenization import tokenizer_lock
from .files import AdapterFileError
from .lora import bump_adapter_version

logger = logging.getLogger(__name__)

__all__ = ["add_embeddings", "embeddings_from_state_dict", "expand_prompts", "remove_embeddings"]

TI_WEIGHT_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
_SNAPSHOT = "_diffblocks_ti_snapshot"
_ADDED = "_diffblocks_ti_tokens"


def embeddings_from_state_dict(state: Any, token: str | None, source: str) -> tuple[str, torch.Tensor] | dict:
    """(token, embedding) from a loaded file, or ``{"clip_l": ..., "clip_g": ...}`` for an SDXL file."""
    if torch.is_tensor(state):
        if token is None:
            raise AdapterFileError(f"{source}: a bare embedding tensor needs token='<name>'.")
        return token, state
    if not isinstance(state, dict) or not state:
        raise AdapterFileError(f"{source}: expected a textual-inversion state dict, got {type(state).__name__}.")
    if "clip_l" in state and "clip_g" in state:
        return {"clip_l": state["clip_l"], "clip_g": state["clip_g"]}
    if "string_to_param" in state:
        params = state["string_to_param"]
        if not isinstance(params, dict) or "*" not in params:
            raise AdapterFileError(f"{source}: A1111 'string_to_param' must hold the embedding under '*'.")
        name = state.get("name")
        return (token or (name if isinstance(name, str) else None) or _missing(source)), params["*"]
    if "emb_params" in state:
        return (token or _missing(source)), state["emb_params"]
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if len(state) == 1 and tensors:
        loaded, embedding = next(iter(tensors.items()))
        return (token or loaded), embedding
    raise AdapterFileError(
        f"{source}: not a textual-inversion file; expected {{token: tensor}} (diffusers), 'string_to_param' or "
        f"'emb_params' (A1111) or 'clip_l'/'clip_g' (SDXL); keys: {sorted(state)[:8]}.")


def _missing(source: str) -> str:
    raise AdapterFileError(f"{source}: the embedding names no token; pass token='<name>'.")


def _vector_tokens(token: str, count: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def add_embeddings(tokenizer: Any, text_encoder: torch.nn.Module, token: str, embedding: torch.Tensor,
                   source: str = "textual inversion") -> list[str]:
    """Add `token` (one token per embedding row) to the tokenizer and its vectors to the text encoder."""
    embedding = embedding.detach()
    if embedding.ndim == 1:
        embedding = embedding[None]
    weights = text_encoder.get_input_embeddings().weight
    if embedding.ndim != 2 or embedding.shape[1] != weights.shape[1]:
        raise AdapterFileError(
            f"{source}: embedding for {token!r} has shape {tuple(embedding.shape)} but {type(text_encoder).__name__} "
            f"takes vectors of size {weights.shape[1]} (an embedding for another model, or clip_l/clip_g swapped?).")
    tokens = _vector_tokens(token, embedding.shape[0])
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if t in vocab]
    if taken:
        raise ValueError(f"Token(s) {taken} already in the tokenizer's vocabulary: choose another token or "
                         f"unload_textual_inversion({token!r}) first.")
    if getattr(tokenizer, _SNAPSHOT, None) is None:
        object.__setattr__(tokenizer, _SNAPSHOT, (copy.deepcopy(tokenizer), weights.shape[0]))
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(max(max(ids) + 1, weights.shape[0]))
    weights = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weights[ids] = embedding.to(device=weights.device, dtype=weights.dtype)
    added: dict[str, torch.Tensor] = getattr(text_encoder, _ADDED, None) or {}
    added[token] = embedding.to("cpu")
    object.__setattr__(text_encoder, _ADDED, added)
    bump_adapter_version(text_encoder)
    return tokens


def remove_embeddings(tokenizer: Any, text_encoder: torch.nn.Module, tokens: list[str] | None = None) -> list[str]:
    """Remove textual-inversion tokens (all when `tokens` is None); returns the removed token names."""
    added: dict[str, torch.Tensor] = dict(getattr(text_encoder, _ADDED, None) or {})
    snapshot = getattr(tokenizer, _SNAPSHOT, None)
    if not added or snapshot is None:
        if tokens:
            raise ValueError(f"unload_textual_inversion: no textual-inversion tokens loaded; asked for {tokens}.")
        return []
    remove = list(added) if tokens is None else list(tokens)
    unknown = [t for t in remove if t not in added]
    if unknown:
        raise ValueError(f"unload_textual_inversion: tokens {unknown} were not loaded; loaded: {list(added)}.")
    original, rows = snapshot
    state = copy.deepcopy(original).__dict__
    tokenizer.__dict__.clear()
    tokenizer.__dict__.update(state)
    object.__setattr__(text_encoder, _ADDED, None)
    text_encoder.resize_token_embeddings(rows)
    for token, embedding in added.items():
        if token not in remove:
            add_embeddings(tokenizer, text_encoder, token, embedding)
    bump_adapter_version(text_encoder)
    return remove


def expand_prompts(tokenizer: Any, prompts: list[str]) -> list[str]:
    """Expand multi-vector tokens in `prompts` (``tok`` -> ``tok tok_1 tok_2``), as the reference does."""
    added = getattr(tokenizer, "added_tokens_encoder", None)
    if not added:
        return prompts
    out = []
    for prompt in prompts:
        with tokenizer_lock(tokenizer):  # tokenize() resets the shared padding settings (components/tokenization.py)
            tokens = set(tokenizer.tokenize(prompt))
        for token in tokens:
            if token in added and f"{token}_1" in added:
                replacement, i = token, 1
                while f"{token}_{i}" in added:
                    replacement += f" {token}_{i}"
                    i += 1
                prompt = prompt.replace(token, replacement)
        out.append(prompt)
    return out
