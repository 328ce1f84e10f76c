"""Tiny standard diffusers-format SD 1.5 / SD 2 / SDXL folders, written offline with the reference library.

Weights are seeded random; the tokenizer is a character-level CLIP BPE vocabulary written here (single
characters and their ``</w>`` forms plus the two special tokens). Each builder returns the folder path.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from model_fixtures import CONTROLNET, INPAINT_UNET, SD2_UNET, SD15_UNET, SD_VAE, SDXL_UNET, perturb_

MAX_LENGTH = 16  # tokenizer model_max_length: short sequences keep the tiny pipelines fast
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def write_tokenizer(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(string.ascii_lowercase + string.digits + "!,.'-"))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_LENGTH)
    tok.save_pretrained(str(directory))


def _tokenizer(tmp: Path):
    from transformers import CLIPTokenizer

    write_tokenizer(tmp)
    return CLIPTokenizer.from_pretrained(str(tmp))


def _text_encoder(hidden: int, seed: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=84, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=82, eos_token_id=83,
        pad_token_id=83, projection_dim=projection_dim or hidden, hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)
    return perturb_(model, seed + 1, std=0.02).eval()


def _diffusers_model(kind: str, config: dict, seed: int):
    import diffusers

    torch.manual_seed(seed)
    return perturb_(getattr(diffusers, kind)(**config), seed + 1).eval()


def build_sd15(root: Path, inpaint: bool = False, name: str | None = None, **unet_overrides) -> Path:
    """SD 1.5-shaped folder with its default PNDM scheduler (9-channel UNet when `inpaint`)."""
    import diffusers

    unet_cfg = {**(INPAINT_UNET if inpaint else SD15_UNET), **unet_overrides}
    pipe_cls = diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionPipeline
    pipe = pipe_cls(
        vae=_diffusers_model("AutoencoderKL", SD_VAE, 1),
        text_encoder=_text_encoder(SD15_UNET["cross_attention_dim"], 2),
        tokenizer=_tokenizer(root / "_tok"),
        unet=_diffusers_model("UNet2DConditionModel", unet_cfg, 3 if not inpaint else 4),
        scheduler=diffusers.PNDMScheduler(**SD_SCHEDULER, skip_prk_steps=True, steps_offset=1,
                                          set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = root / (name or ("sd15-inpaint" if inpaint else "sd15"))
    pipe.save_pretrained(str(out))
    return out


def build_sd2(root: Path) -> Path:
    """SD 2-shaped folder: v-prediction DDIM, linear-projection UNet with per-block heads."""
    import diffusers

    pipe = diffusers.StableDiffusionPipeline(
        vae=_diffusers_model("AutoencoderKL", SD_VAE, 11),
        text_encoder=_text_encoder(SD2_UNET["cross_attention_dim"], 12),
        tokenizer=_tokenizer(root / "_tok"),
        unet=_diffusers_model("UNet2DConditionModel", SD2_UNET, 13),
        scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER, prediction_type="v_prediction", steps_offset=1,
                                          clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = root / "sd2"
    pipe.save_pretrained(str(out))
    return out


def build_sdxl(root: Path) -> Path:
    """SDXL-shaped folder: two text encoders (the second with projection), text_time UNet, Euler."""
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_diffusers_model("AutoencoderKL", SD_VAE, 21),
        text_encoder=_text_encoder(16, 22),
        text_encoder_2=_text_encoder(32, 23, projection_dim=32),
        tokenizer=_tokenizer(root / "_tok"),
        tokenizer_2=_tokenizer(root / "_tok2"),
        unet=_diffusers_model("UNet2DConditionModel", SDXL_UNET, 24),
        scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHEDULER, steps_offset=1),
    )
    out = root / "sdxl"
    pipe.save_pretrained(str(out))
    return out


def build_sdxl_refiner(root: Path) -> Path:
    """SDXL refiner-shaped folder: text_encoder_2 / tokenizer_2 only, a UNet conditioned on aesthetic scores
    (time ids = original size, crop top-left, aesthetic score: 5 values), `requires_aesthetics_score: true`."""
    import diffusers

    te_dim = 32
    unet = {**SDXL_UNET, "cross_attention_dim": te_dim,
            "projection_class_embeddings_input_dim": te_dim + 5 * SDXL_UNET["addition_time_embed_dim"]}
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=_diffusers_model("AutoencoderKL", SD_VAE, 51),
        text_encoder=None,
        text_encoder_2=_text_encoder(te_dim, 52, projection_dim=te_dim),
        tokenizer=None,
        tokenizer_2=_tokenizer(root / "_tok2"),
        unet=_diffusers_model("UNet2DConditionModel", unet, 54),
        scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHEDULER, steps_offset=1),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    out = root / "sdxl-refiner"
    pipe.save_pretrained(str(out))
    return out


def build_controlnet(root: Path) -> Path:
    out = root / "controlnet"
    # one downsampling conditioning stage: the tiny VAE downsamples by 2, not 8
    config = {**CONTROLNET, "conditioning_embedding_out_channels": [8, 16]}
    _diffusers_model("ControlNetModel", config, 31).save_pretrained(str(out))
    return out


def build_sdxl_controlnet(root: Path) -> Path:
    out = root / "controlnet-xl"
    keys = ("down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
            "transformer_layers_per_block", "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
            "projection_class_embeddings_input_dim", "norm_num_groups")
    config = {k: SDXL_UNET[k] for k in keys}
    config.update(in_channels=4, conditioning_embedding_out_channels=[8, 16])
    _diffusers_model("ControlNetModel", config, 41).save_pretrained(str(out))
    return out


def test_image(size: int = 64, seed: int = 0, mode: str = "RGB"):
    """A seeded smooth PIL image (a mask when mode='L' with a bright square)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "L":
        arr = np.zeros((size, size), dtype=np.uint8)
        arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        return Image.fromarray(arr, "L")
    base = rng.random((4, 4, 3))
    arr = np.kron(base, np.ones((size // 4, size // 4, 1)))
    return Image.fromarray((arr * 255).astype(np.uint8), "RGB")


test_image.__test__ = False  # not a pytest test
