"""Flux encoders: prompts (CLIP pooled output + T5 sequence) and images (VAE latents, inpainting masks)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from ...blocks import (
    BlockInputError,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ...components.adapters.lora import lora_scale
from ...components.models import AutoencoderKL
from ...components.spec import ComponentSpec
from ...components.tokenization import tokenize
from ..common.utils import (
    check_finite,
    check_image,
    encode_posterior,
    execution_device,
    guider_for_call,
    guider_spec,
    image_processor_spec,
    mask_processor_spec,
    sample_posterior,
)
from .utils import DEFAULT_TRUE_CFG_SCALE, PROCESSOR_CONFIG, resolve_size

logger = logging.getLogger(__name__)

__all__ = [
    "FluxImageVaeEncoderStep", "FluxInpaintImageVaeEncoderStep", "FluxInpaintVaeEncoderStep",
    "FluxSampleImageLatentsStep", "FluxTextEncoderStep", "FluxVaeEncoderStep",
]

MAX_T5_LENGTH = 512
IMAGE_HINT = "PIL.Image.Image | np.ndarray | torch.Tensor | list"


def _as_list(block: str, name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise BlockInputError(f"Block {block!r}: input {name!r} must be a string or a non-empty list of strings, "
                          f"got {type(value).__name__}.", block=block, input_name=name)


def _warn_truncated(tokenizer: Any, prompts: list[str], ids: torch.Tensor, limit: int, what: str) -> None:
    full = tokenize(tokenizer, prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1]:
        removed = tokenizer.batch_decode(full[:, limit - 1: -1])
        logger.warning("Part of the prompt was truncated because %s is %d tokens: %s", what, limit, removed)


class FluxTextEncoderStep(ModularPipelineBlocks):
    """CLIP gives the pooled prompt vector, T5 the token sequence; negatives only when true CFG runs."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Text encoder step: pooled_prompt_embeds from CLIP (`prompt`) and prompt_embeds from T5 "
                "(`prompt_2`, defaults to `prompt`, padded to `max_sequence_length`). Negative embeddings are "
                "computed only when the call's guider needs them (true CFG: `true_cfg_scale` > 1 and a "
                "`negative_prompt`). Precomputed embeddings pass through.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec("text_encoder", CLIPTextModel),
            ComponentSpec("tokenizer", CLIPTokenizer),
            ComponentSpec("text_encoder_2", T5EncoderModel),
            ComponentSpec("tokenizer_2", T5TokenizerFast),
            guider_spec(DEFAULT_TRUE_CFG_SCALE),
        ]

    @property
    def inputs(self) -> list[InputParam]:
        text = "str | list[str]"
        return [
            InputParam("prompt", type_hint=text, description="prompt(s) for both encoders"),
            InputParam("prompt_2", type_hint=text, description="prompt(s) for T5 (defaults to `prompt`)"),
            InputParam("negative_prompt", type_hint=text, description="negative prompt(s) for true CFG"),
            InputParam("negative_prompt_2", type_hint=text,
                       description="negative prompt(s) for T5 (defaults to `negative_prompt`)"),
            InputParam("true_cfg_scale", type_hint=float,
                       description="true classifier-free guidance scale for this call (> 1 with a negative prompt "
                                   "runs a second, unconditional pass; default: the guider's, i.e. off)"),
            InputParam("max_sequence_length", type_hint=int, default=512, description="T5 tokens (at most 512)"),
            InputParam("prompt_embeds", type_hint=torch.Tensor, description="precomputed T5 embeddings"),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, description="precomputed CLIP pooled output"),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
            InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
            InputParam("joint_attention_kwargs", type_hint=dict,
                       description="'scale' scales the text encoders' LoRA adapters for this call"),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("prompt_embeds", torch.Tensor, "T5 sequence embeddings (prompts, seq, dim)",
                        kwargs_type="denoiser_input_fields"),
            OutputParam("pooled_prompt_embeds", torch.Tensor, "CLIP pooled embeddings (prompts, dim)",
                        kwargs_type="denoiser_input_fields"),
            OutputParam("negative_prompt_embeds", torch.Tensor, "T5 embeddings of the negative prompt, or None",
                        kwargs_type="denoiser_input_fields"),
            OutputParam("negative_pooled_prompt_embeds", torch.Tensor, "CLIP pooled negative embeddings, or None",
                        kwargs_type="denoiser_input_fields"),
        ]

    @staticmethod
    def _clip_pooled(components: Any, prompts: list[str], device: torch.device) -> torch.Tensor:
        tokenizer, encoder = components.tokenizer, components.text_encoder
        limit = tokenizer.model_max_length
        ids = tokenize(tokenizer, prompts, padding="max_length", max_length=limit, truncation=True,
                       return_tensors="pt").input_ids
        _warn_truncated(tokenizer, prompts, ids, limit, "CLIP's maximum length")
        pooled = encoder(ids.to(encoder.device), output_hidden_states=False).pooler_output
        return pooled.to(dtype=encoder.dtype, device=device)

    @staticmethod
    def _t5_sequence(components: Any, prompts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
        tokenizer, encoder = components.tokenizer_2, components.text_encoder_2
        ids = tokenize(tokenizer, prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt").input_ids
        _warn_truncated(tokenizer, prompts, ids, max_length, "max_sequence_length")
        embeds = encoder(ids.to(encoder.device), output_hidden_states=False)[0]
        return embeds.to(dtype=encoder.dtype, device=device)

    def _encode(self, components: Any, prompt: list[str], prompt_2: list[str] | None, max_length: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_2 = prompt_2 or prompt
        if len(prompt_2) != len(prompt):
            name = type(self).__name__
            raise BlockInputError(f"Block {name!r}: input 'prompt_2' has {len(prompt_2)} prompts but 'prompt' has "
                                  f"{len(prompt)}; give the same number.", block=name, input_name="prompt_2")
        pooled = self._clip_pooled(components, prompt, device)
        return self._t5_sequence(components, prompt_2, max_length, device), pooled

    def __call__(self, components: Any, state: Any):
        # joint_attention_kwargs={"scale": s} scales the text encoders' LoRA for this call, as in the reference
        scale = (state.get("joint_attention_kwargs") or {}).get("scale")
        with lora_scale([components.text_encoder, components.text_encoder_2], scale):
            return self._encode_prompts(components, state)

    def _encode_prompts(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        name = type(self).__name__
        max_length = bs.max_sequence_length
        if not 0 < max_length <= MAX_T5_LENGTH:
            raise BlockInputError(f"Block {name!r}: input 'max_sequence_length' must be in [1, {MAX_T5_LENGTH}], "
                                  f"got {max_length}.", block=name, input_name="max_sequence_length")
        device = execution_device(components)
        prompt = _as_list(name, "prompt", bs.prompt)
        prompt_2 = _as_list(name, "prompt_2", bs.prompt_2)
        negative = _as_list(name, "negative_prompt", bs.negative_prompt)
        negative_2 = _as_list(name, "negative_prompt_2", bs.negative_prompt_2)

        if bs.prompt_embeds is None:
            if prompt is None:
                raise BlockInputError(f"Block {name!r}: give 'prompt' (or 'prompt_embeds' with "
                                      f"'pooled_prompt_embeds').", block=name, input_name="prompt")
            bs.prompt_embeds, bs.pooled_prompt_embeds = self._encode(components, prompt, prompt_2, max_length, device)
        elif prompt is not None or bs.pooled_prompt_embeds is None:
            bad = "prompt" if prompt is not None else "pooled_prompt_embeds"
            raise BlockInputError(f"Block {name!r}: with 'prompt_embeds' give 'pooled_prompt_embeds' and no "
                                  f"'prompt' (got {bad!r} wrong).", block=name, input_name=bad)

        check_finite(name, "true_cfg_scale", bs.true_cfg_scale)
        guider = guider_for_call(components, bs.true_cfg_scale, block=name)
        has_negative = negative is not None or bs.negative_prompt_embeds is not None
        if guider.requires_unconditional and has_negative:
            if bs.negative_prompt_embeds is None:
                if negative_2 is not None and len(negative_2) != len(negative):
                    raise BlockInputError(f"Block {name!r}: 'negative_prompt_2' and 'negative_prompt' differ in "
                                          f"length.", block=name, input_name="negative_prompt_2")
                bs.negative_prompt_embeds, bs.negative_pooled_prompt_embeds = self._encode(
                    components, negative, negative_2, max_length, device)
            elif bs.negative_pooled_prompt_embeds is None:
                raise BlockInputError(f"Block {name!r}: 'negative_prompt_embeds' needs "
                                      f"'negative_pooled_prompt_embeds'.", block=name,
                                      input_name="negative_pooled_prompt_embeds")
        else:
            if guider.requires_unconditional:
                logger.info("%s: the guider asks for guidance but no negative prompt was given; running the "
                            "conditional pass only (as FluxPipeline does).", name)
            bs.negative_prompt_embeds = None
            bs.negative_pooled_prompt_embeds = None
        self.set_block_state(state, bs)
        return components, state


class FluxImageVaeEncoderStep(ModularPipelineBlocks):
    """Preprocess the image and VAE-encode it to the posterior's parameters (deterministic: cacheable)."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Preprocesses `image` to height x width (default 1024 px for the 8x VAE) and VAE-encodes it into "
                "`image_posterior` (mean and log-variance). Takes no generator, so the block cache reuses it when "
                "only the seed changes.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL), image_processor_spec(**PROCESSOR_CONFIG)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("image", type_hint=IMAGE_HINT, required=True,
                       description="init image(s): PIL, numpy or tensor in [0, 1]"),
            InputParam("height", type_hint=int, description="output height in pixels"),
            InputParam("width", type_hint=int, description="output width in pixels"),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_posterior", torch.Tensor,
                            "VAE posterior parameters of the image(s), (N, 32, h, w)")]

    def _encode_image(self, components: Any, bs: Any) -> None:
        check_image(type(self).__name__, "image", bs.image, channels=(3,))
        bs.height, bs.width = resolve_size(type(self).__name__, components, bs.height, bs.width)
        image = components.image_processor.preprocess(bs.image, height=bs.height, width=bs.width)
        vae = components.vae
        bs.image_posterior = encode_posterior(vae, image.to(torch.float32).to(device=vae.device, dtype=vae.dtype))

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        self._encode_image(components, bs)
        self.set_block_state(state, bs)
        return components, state


class FluxInpaintImageVaeEncoderStep(FluxImageVaeEncoderStep):
    """The image's VAE posterior plus the preprocessed (binarised) mask; white mask pixels are repainted."""

    @property
    def description(self) -> str:
        return ("Inpaint VAE encoder step: encodes `image` into `image_posterior` and preprocesses `mask_image` "
                "(white = repaint) to height x width (cacheable: no generator).")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [*super().expected_components, mask_processor_spec(**PROCESSOR_CONFIG)]

    @property
    def inputs(self) -> list[InputParam]:
        return [*super().inputs,
                InputParam("mask_image", type_hint=IMAGE_HINT, required=True,
                           description="mask(s): white = repaint, black = keep")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [*super().intermediate_outputs,
                OutputParam("processed_mask_image", torch.Tensor, "binarised mask(s), (N, 1, height, width)")]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        check_image(type(self).__name__, "mask_image", bs.mask_image)
        self._encode_image(components, bs)
        bs.processed_mask_image = components.mask_processor.preprocess(bs.mask_image, height=bs.height,
                                                                       width=bs.width)
        self.set_block_state(state, bs)
        return components, state


class FluxSampleImageLatentsStep(ModularPipelineBlocks):
    """Image latents ``(sample - shift_factor) * scaling_factor`` drawn from the posterior, one sample per image."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Samples `image_posterior` with `generator` (one per image when a list is given) into scaled "
                "`image_latents`.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("vae", AutoencoderKL)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image_posterior", torch.Tensor, required=True,
                           description="VAE posterior parameters (from FluxImageVaeEncoderStep)"),
                InputParam("generator", description="torch.Generator, or one per image")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("image_latents", torch.Tensor, "scaled VAE latents of the image(s), (N, 16, h, w)")]

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        config = components.vae.config
        latents = sample_posterior(bs.image_posterior, bs.generator)
        bs.image_latents = (latents - config.shift_factor) * config.scaling_factor
        self.set_block_state(state, bs)
        return components, state


class FluxVaeEncoderStep(SequentialPipelineBlocks):
    """Image -> scaled VAE latents: the cacheable encode, then the seeded sampling."""

    model_name = "flux"
    block_classes = [FluxImageVaeEncoderStep, FluxSampleImageLatentsStep]
    block_names = ["encode", "sample"]

    @property
    def description(self) -> str:
        return ("VAE encoder step: `encode` preprocesses `image` and computes its VAE posterior (cached across "
                "calls when the block cache is on), `sample` draws image_latents with `generator`.")


class FluxInpaintVaeEncoderStep(SequentialPipelineBlocks):
    """Image latents plus the preprocessed mask: the cacheable encode, then the seeded sampling."""

    model_name = "flux"
    block_classes = [FluxInpaintImageVaeEncoderStep, FluxSampleImageLatentsStep]
    block_names = ["encode", "sample"]

    @property
    def description(self) -> str:
        return ("Inpaint VAE encoder step: `encode` computes the image's VAE posterior and the binarised mask "
                "(white = repaint; cached across calls when the block cache is on), `sample` draws image_latents "
                "with `generator`.")
