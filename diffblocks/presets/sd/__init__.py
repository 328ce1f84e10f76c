"""Stable Diffusion 1.x / 2.x presets: text-to-image, image-to-image, inpainting, ControlNet and an auto preset.

Each block dict is an `InsertableDict` of block classes; `StableDiffusionAutoBlocks` picks the workflow from
the inputs (`mask_image` -> inpainting, `image` -> image-to-image, `control_image` -> ControlNet, else
text-to-image).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from ...blocks import (
    BlockInputError,
    InputParam,
    InsertableDict,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ...components.adapters.lora import lora_scale
from ...components.adapters.textual_inversion import expand_prompts
from ...components.spec import ComponentSpec
from ...components.tokenization import tokenize
from ..common import (
    AutoControlNetDenoiseStep,
    AutoControlNetInputStep,
    AutoDecodeStep,
    AutoDenoiseStep,
    AutoPrepareLatentsStep,
    AutoSetTimestepsStep,
    AutoVaeEncoderStep,
    ControlNetDenoiseStep,
    ControlNetInputStep,
    DecodeStep,
    DenoiseStep,
    Img2ImgPrepareLatentsStep,
    Img2ImgSetTimestepsStep,
    InpaintDecodeStep,
    InpaintDenoiseStep,
    InpaintPrepareLatentsStep,
    InpaintSetTimestepsStep,
    InpaintVaeEncoderStep,
    InputStep,
    PrepareLatentsStep,
    SetTimestepsStep,
    VaeEncoderStep,
    execution_device,
    guidance_inputs,
    guider_for_call,
    guider_spec,
    standard_workflows,
)

__all__ = [
    "AUTO_BLOCKS", "CONTROLNET_BLOCKS", "IMAGE2IMAGE_BLOCKS", "INPAINT_BLOCKS", "TEXT2IMAGE_BLOCKS",
    # shared auto steps, defined in presets.common and re-exported here
    "AutoControlNetDenoiseStep", "AutoControlNetInputStep", "AutoDecodeStep", "AutoDenoiseStep",
    "AutoPrepareLatentsStep", "AutoSetTimestepsStep", "AutoVaeEncoderStep", "InpaintSetTimestepsStep",
    "StableDiffusionAutoBlocks", "StableDiffusionInputStep", "StableDiffusionTextEncoderStep", "as_prompt_list",
    "encode_clip",
]


def as_prompt_list(block: str, name: str, prompt: Any) -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise BlockInputError(f"Block {block!r}: input {name!r} must be a string or a non-empty list of strings, got "
                          f"{prompt!r}." if isinstance(prompt, (list, tuple)) and not prompt else
                          f"Block {block!r}: input {name!r} must be a string or a non-empty list of strings, got "
                          f"{type(prompt).__name__}.", block=block, input_name=name)


def match_negative(block: str, negative: list[str] | None, batch: int) -> list[str]:
    if negative is None:
        return [""] * batch
    if len(negative) == 1 and batch > 1:
        return negative * batch
    if len(negative) != batch:
        raise BlockInputError(f"Block {block!r}: negative_prompt has {len(negative)} entries but there are {batch} "
                              f"prompts; give one negative prompt or one per prompt.", block=block,
                              input_name="negative_prompt")
    return negative


def encode_clip(tokenizer, text_encoder, prompts: list[str], clip_skip: int | None = None,
                max_length: int | None = None) -> torch.Tensor:
    """SD 1.x/2.x text embeddings: last hidden state, or the `clip_skip`-th from the end through the final norm."""
    prompts = expand_prompts(tokenizer, prompts)  # multi-vector textual-inversion tokens
    ids = tokenize(tokenizer, prompts, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                   truncation=True, return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokenize(tokenizer, prompts, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").attention_mask.to(device)
    if clip_skip is None:
        return text_encoder(ids.to(device), attention_mask=mask)[0]
    out = text_encoder(ids.to(device), attention_mask=mask, output_hidden_states=True)
    model = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 flattened CLIPTextModel
    return model.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


class StableDiffusionTextEncoderStep(ModularPipelineBlocks):
    model_name = "stable-diffusion"
    default_guidance_scale = 7.5

    @property
    def description(self) -> str:
        return ("Text encoder step: CLIP embeddings for `prompt` and, when the guider needs them, "
                "`negative_prompt`; precomputed `prompt_embeds` / `negative_prompt_embeds` pass through")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("text_encoder", CLIPTextModel), ComponentSpec("tokenizer", CLIPTokenizer),
                guider_spec(self.default_guidance_scale)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("prompt", type_hint=list[str] | str), InputParam("negative_prompt", type_hint=list[str] | str),
                InputParam("prompt_embeds", type_hint=torch.Tensor),
                InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
                InputParam("clip_skip", type_hint=int), *guidance_inputs()[:1],
                InputParam("cross_attention_kwargs", type_hint=dict,
                           description="'scale' scales LoRA adapters for this call")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("prompt_embeds", type_hint=torch.Tensor, description="text embeddings (B, L, D)"),
                OutputParam("negative_prompt_embeds", type_hint=torch.Tensor,
                            description="negative text embeddings, or None when guidance is off")]

    def __call__(self, components, state):
        # cross_attention_kwargs={"scale": s} scales the text encoders' LoRA for this call, as in the reference
        scale = (state.get("cross_attention_kwargs") or {}).get("scale")
        with lora_scale([components.text_encoder], scale):
            return self._encode_prompts(components, state)

    def _encode_prompts(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        if bs.prompt is not None and bs.prompt_embeds is not None:
            raise BlockInputError(f"Block {name!r}: pass either `prompt` or `prompt_embeds`, not both.",
                                  block=name, input_name="prompt_embeds")
        prompts = as_prompt_list(name, "prompt", bs.prompt)
        if prompts is None and bs.prompt_embeds is None:
            raise BlockInputError(f"Block {name!r}: provide `prompt` or `prompt_embeds`.", block=name,
                                  input_name="prompt")
        guider = guider_for_call(components, bs.guidance_scale, for_text=True, block=name)
        te = components.text_encoder
        dtype = te.dtype if te is not None else bs.prompt_embeds.dtype
        device = execution_device(components)
        if bs.prompt_embeds is None:
            bs.prompt_embeds = encode_clip(components.tokenizer, te, prompts, bs.clip_skip)
        bs.prompt_embeds = bs.prompt_embeds.to(dtype=dtype, device=device)
        batch = bs.prompt_embeds.shape[0]
        if not guider.requires_unconditional:
            bs.negative_prompt_embeds = None
        elif bs.negative_prompt_embeds is None:
            negatives = match_negative(name, as_prompt_list(name, "negative_prompt", bs.negative_prompt), batch)
            bs.negative_prompt_embeds = encode_clip(components.tokenizer, te, negatives,
                                                    max_length=bs.prompt_embeds.shape[1])
        if bs.negative_prompt_embeds is not None:
            bs.negative_prompt_embeds = bs.negative_prompt_embeds.to(dtype=dtype, device=device)
            if bs.negative_prompt_embeds.shape != bs.prompt_embeds.shape:
                raise BlockInputError(
                    f"Block {name!r}: negative_prompt_embeds shape {tuple(bs.negative_prompt_embeds.shape)} must "
                    f"match prompt_embeds shape {tuple(bs.prompt_embeds.shape)}.", block=name,
                    input_name="negative_prompt_embeds")
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionInputStep(InputStep):
    embed_names = [("prompt_embeds", "negative_prompt_embeds", False)]


# -- block dicts ---------------------------------------------------------------------------------------------------
TEXT2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("input", StableDiffusionInputStep),
    ("set_timesteps", SetTimestepsStep),
    ("prepare_latents", PrepareLatentsStep),
    ("denoise", DenoiseStep),
    ("decode", DecodeStep),
])

IMAGE2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("input", StableDiffusionInputStep),
    ("vae_encoder", VaeEncoderStep),
    ("set_timesteps", Img2ImgSetTimestepsStep),
    ("prepare_latents", Img2ImgPrepareLatentsStep),
    ("denoise", DenoiseStep),
    ("decode", DecodeStep),
])

INPAINT_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("input", StableDiffusionInputStep),
    ("vae_encoder", InpaintVaeEncoderStep),
    ("set_timesteps", InpaintSetTimestepsStep),
    ("prepare_latents", InpaintPrepareLatentsStep),
    ("denoise", InpaintDenoiseStep),
    ("decode", InpaintDecodeStep),
])

CONTROLNET_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("input", StableDiffusionInputStep),
    ("set_timesteps", SetTimestepsStep),
    ("prepare_latents", PrepareLatentsStep),
    ("controlnet_input", ControlNetInputStep),
    ("denoise", ControlNetDenoiseStep),
    ("decode", DecodeStep),
])


# -- auto preset ---------------------------------------------------------------------------------------------------
AUTO_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("input", StableDiffusionInputStep),
    ("vae_encoder", AutoVaeEncoderStep),
    ("set_timesteps", AutoSetTimestepsStep),
    ("prepare_latents", AutoPrepareLatentsStep),
    ("controlnet_input", AutoControlNetInputStep),
    ("denoise", AutoDenoiseStep),
    ("decode", AutoDecodeStep),
])


class StableDiffusionAutoBlocks(SequentialPipelineBlocks):
    """SD 1.x/2.x: text-to-image, image-to-image, inpainting and ControlNet in one block graph."""

    model_name = "stable-diffusion"
    block_classes = list(AUTO_BLOCKS.values())
    block_names = list(AUTO_BLOCKS.keys())
    workflow_map = standard_workflows({"controlnet": {"control_image": True}})

    @property
    def description(self) -> str:
        return ("Auto pipeline for Stable Diffusion 1.x/2.x. Inputs select the workflow:\n"
                "  - `mask_image` + `image` -> inpainting (4- or 9-channel UNet)\n"
                "  - `image` -> image-to-image\n"
                "  - `control_image` (with a `controlnet` component) -> ControlNet, combinable with the above\n"
                "  - otherwise text-to-image from `prompt` / `prompt_embeds`")
