"""A tiny standard diffusers-format Flux folder (`FluxPipeline` in model_index.json), written offline.

The reference library builds and saves every component with seeded random weights: FluxTransformer2DModel
(guidance embedding, FLUX.1-dev style), a 16-channel AutoencoderKL with shift_factor and no quant convs, a
CLIPTextModel with a character-level CLIP BPE tokenizer written here, a T5EncoderModel with a Unigram T5
tokenizer built by the `tokenizers` library, and a FlowMatchEulerDiscreteScheduler with dynamic shifting.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from model_fixtures import FLUX_LIKE_VAE, perturb_

CLIP_MAX_LENGTH = 16  # CLIP tokenizer model_max_length (the real one is 77)
CLIP_DIM = 32
T5_DIM = 32
MAX_SEQUENCE_LENGTH = 12  # pass as max_sequence_length in tests (the real default is 512)

FLUX_TRANSFORMER: dict = {
    "patch_size": 1, "in_channels": 4 * FLUX_LIKE_VAE["latent_channels"], "num_layers": 1, "num_single_layers": 2,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": T5_DIM,
    "pooled_projection_dim": CLIP_DIM, "guidance_embeds": True, "axes_dims_rope": [4, 6, 6],
}
# FLUX.1-dev's scheduler config
FLUX_SCHEDULER: dict = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}
_CHARS = sorted(set(string.ascii_lowercase + string.digits + "!,.'-"))


def _clip_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in _CHARS:
        vocab[c] = len(vocab)
    for c in _CHARS:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                         model_max_length=CLIP_MAX_LENGTH)


def _t5_tokenizer():
    """A Unigram model over single characters (with and without the word-start marker), via `tokenizers`."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in _CHARS] + [("\u2581" + c, -3.5) for c in _CHARS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip_text_encoder(vocab_size: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=CLIP_DIM, hidden_act="gelu",
    )
    torch.manual_seed(seed)
    return perturb_(CLIPTextModel(config), seed + 1, std=0.02).eval()


def _t5_encoder(vocab_size: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=T5_DIM, d_kv=8, d_ff=2 * T5_DIM, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    return perturb_(T5EncoderModel(config), seed + 1, std=0.02).eval()


def build_flux(root: Path) -> Path:
    """Write the tiny Flux folder under `root` and return its path."""
    import diffusers

    tokenizer = _clip_tokenizer(root / "_clip_tok")
    tokenizer_2 = _t5_tokenizer()
    torch.manual_seed(41)
    transformer = perturb_(diffusers.FluxTransformer2DModel(**FLUX_TRANSFORMER), 42).eval()
    torch.manual_seed(43)
    vae = perturb_(diffusers.AutoencoderKL(**FLUX_LIKE_VAE), 44).eval()
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae,
        text_encoder=_clip_text_encoder(len(tokenizer), 45),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2), 47),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    out = root / "flux"
    pipe.save_pretrained(str(out))
    return out


def flux_image(size: int = 32, seed: int = 0, mode: str = "RGB"):
    """A seeded blocky PIL image, or (mode='L') a mask with a bright centre square."""
    import numpy as np
    from PIL import Image

    if mode == "L":
        arr = np.zeros((size, size), dtype=np.uint8)
        arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        return Image.fromarray(arr, "L")
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.random((4, 4, 3)), np.ones((size // 4, size // 4, 1)))
    return Image.fromarray((arr * 255).astype(np.uint8), "RGB")
