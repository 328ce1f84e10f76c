"""Stable Diffusion XL presets: two CLIP text encoders with pooled output, added time-id conditioning.

Block dicts: `TEXT2IMAGE_BLOCKS`, `IMAGE2IMAGE_BLOCKS`, `INPAINT_BLOCKS`, `CONTROLNET_BLOCKS`, and the auto
preset `StableDiffusionXLAutoBlocks` (`mask_image` -> inpainting, `image` -> image-to-image,
`control_image` -> ControlNet, else text-to-image).
"""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ...blocks import (
    AutoPipelineBlocks,
    BlockInputError,
    ConfigSpec,
    InputParam,
    InsertableDict,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ...components.adapters.lora import lora_scale
from ...components.adapters.textual_inversion import expand_prompts
from ...components.models import UNet2DConditionModel
from ...components.spec import ComponentSpec
from ...components.tokenization import tokenize
from ...runtime.callbacks import TensorView, attr_view, concat_view
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
    ControlNetLoopDenoiser,
    DecodeStep,
    DenoiseLoopWrapper,
    Img2ImgPrepareLatentsStep,
    Img2ImgSetTimestepsStep,
    InpaintControlNetDenoiseStep,
    InpaintDecodeStep,
    InpaintDenoiseStep,
    InpaintLoopAfterDenoiser,
    InpaintLoopBeforeDenoiser,
    InpaintPrepareLatentsStep,
    InpaintVaeEncoderStep,
    InputStep,
    LoopAfterDenoiser,
    LoopBeforeDenoiser,
    LoopDenoiser,
    PrepareLatentsStep,
    SetTimestepsStep,
    VaeEncoderStep,
    execution_device,
    guidance_inputs,
    guider_for_call,
    guider_spec,
    standard_workflows,
    vae_scale_factor,
)
from ..sd import as_prompt_list

__all__ = [
    "AUTO_BLOCKS", "CONTROLNET_BLOCKS", "IMAGE2IMAGE_BLOCKS", "INPAINT_BLOCKS", "TEXT2IMAGE_BLOCKS",
    "StableDiffusionXLAutoBlocks", "StableDiffusionXLControlNetDenoiseStep", "StableDiffusionXLControlNetLoopDenoiser",
    "StableDiffusionXLDecodeStep", "StableDiffusionXLDenoiseLoopWrapper", "StableDiffusionXLDenoiseStep",
    "StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep", "StableDiffusionXLImg2ImgPrepareLatentsStep",
    "StableDiffusionXLImg2ImgSetTimestepsStep", "StableDiffusionXLInputStep", "StableDiffusionXLLoopAfterDenoiser",
    "StableDiffusionXLLoopBeforeDenoiser", "StableDiffusionXLLoopDenoiser",
    "StableDiffusionXLPrepareAdditionalConditioningStep", "StableDiffusionXLPrepareLatentsStep",
    "StableDiffusionXLSetTimestepsStep", "StableDiffusionXLTextEncoderStep", "StableDiffusionXLVaeEncoderStep",
]


XL_GUIDANCE = 5.0  # the standard SDXL pipelines' default guidance_scale


class StableDiffusionXLTextEncoderStep(ModularPipelineBlocks):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE

    @property
    def description(self) -> str:
        return ("Text encoder step: penultimate hidden states of both CLIP encoders (concatenated) and the pooled "
                "output of the second; negatives are zeros for an empty negative prompt when "
                "`force_zeros_for_empty_prompt`")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("text_encoder", CLIPTextModel),
                ComponentSpec("text_encoder_2", CLIPTextModelWithProjection),
                ComponentSpec("tokenizer", CLIPTokenizer), ComponentSpec("tokenizer_2", CLIPTokenizer),
                guider_spec(self.default_guidance_scale)]

    @property
    def expected_configs(self) -> list[ConfigSpec]:
        return [ConfigSpec("force_zeros_for_empty_prompt", True)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("prompt", type_hint=list[str] | str), InputParam("prompt_2", type_hint=list[str] | str),
                InputParam("negative_prompt", type_hint=list[str] | str),
                InputParam("negative_prompt_2", type_hint=list[str] | str),
                InputParam("prompt_embeds", type_hint=torch.Tensor),
                InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
                InputParam("pooled_prompt_embeds", type_hint=torch.Tensor),
                InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
                InputParam("clip_skip", type_hint=int), *guidance_inputs()[:1],
                InputParam("cross_attention_kwargs", type_hint=dict,
                           description="'scale' scales LoRA adapters for this call")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("prompt_embeds", type_hint=torch.Tensor),
                OutputParam("negative_prompt_embeds", type_hint=torch.Tensor),
                OutputParam("pooled_prompt_embeds", type_hint=torch.Tensor),
                OutputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor)]

    @staticmethod
    def _encode(pairs, prompts_per_encoder, clip_skip, max_length=None):
        embeds, pooled = [], None
        for (tokenizer, encoder), prompts in zip(pairs, prompts_per_encoder):
            prompts = expand_prompts(tokenizer, prompts)  # multi-vector textual-inversion tokens
            ids = tokenize(tokenizer, prompts, padding="max_length",
                           max_length=max_length or tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids
            out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            embeds.append(out.hidden_states[-2] if clip_skip is None else out.hidden_states[-(clip_skip + 2)])
        return torch.cat(embeds, dim=-1), pooled

    def __call__(self, components, state):
        # cross_attention_kwargs={"scale": s} scales the text encoders' LoRA for this call, as in the reference
        scale = (state.get("cross_attention_kwargs") or {}).get("scale")
        with lora_scale([components.text_encoder, components.text_encoder_2], scale):
            return self._encode_prompts(components, state)

    def _encode_prompts(self, components, state):
        bs = self.get_block_state(state)
        name = type(self).__name__
        if bs.prompt is not None and bs.prompt_embeds is not None:
            raise BlockInputError(f"Block {name!r}: pass either `prompt` or `prompt_embeds`, not both.",
                                  block=name, input_name="prompt_embeds")
        if bs.prompt_embeds is not None and bs.pooled_prompt_embeds is None:
            raise BlockInputError(f"Block {name!r}: with `prompt_embeds` also pass `pooled_prompt_embeds`.",
                                  block=name, input_name="pooled_prompt_embeds")
        prompts = as_prompt_list(name, "prompt", bs.prompt)
        if prompts is None and bs.prompt_embeds is None:
            raise BlockInputError(f"Block {name!r}: provide `prompt` or `prompt_embeds`.", block=name,
                                  input_name="prompt")
        pairs = [(tok, enc) for tok, enc in ((components.tokenizer, components.text_encoder),
                                             (components.tokenizer_2, components.text_encoder_2)) if enc is not None]
        guider = guider_for_call(components, bs.guidance_scale, for_text=True, block=name)
        device = execution_device(components)
        te2 = components.text_encoder_2
        dtype = te2.dtype if te2 is not None else (bs.prompt_embeds.dtype if bs.prompt_embeds is not None
                                                   else components.unet.dtype)
        if bs.prompt_embeds is None:
            prompts_2 = as_prompt_list(name, "prompt_2", bs.prompt_2) or prompts
            per_encoder = [prompts, prompts_2][:len(pairs)]  # a refiner (encoder 2 only) reads `prompt`
            bs.prompt_embeds, bs.pooled_prompt_embeds = self._encode(pairs, per_encoder, bs.clip_skip)
        batch = bs.prompt_embeds.shape[0]
        force_zeros = getattr(components, "force_zeros_for_empty_prompt", True)
        if not guider.requires_unconditional:
            bs.negative_prompt_embeds = bs.negative_pooled_prompt_embeds = None
        elif bs.negative_prompt_embeds is None and bs.negative_prompt is None and force_zeros:
            bs.negative_prompt_embeds = torch.zeros_like(bs.prompt_embeds)
            bs.negative_pooled_prompt_embeds = torch.zeros_like(bs.pooled_prompt_embeds)
        elif bs.negative_prompt_embeds is None:
            neg = as_prompt_list(name, "negative_prompt", bs.negative_prompt or "")
            neg_2 = as_prompt_list(name, "negative_prompt_2", bs.negative_prompt_2) or neg
            lists = []
            for item in (neg, neg_2):
                if len(item) == 1 and batch > 1:
                    item = item * batch
                if len(item) != batch:
                    raise BlockInputError(f"Block {name!r}: negative_prompt has {len(item)} entries for {batch} "
                                          f"prompts.", block=name, input_name="negative_prompt")
                lists.append(item)
            per_encoder = lists[:len(pairs)]
            bs.negative_prompt_embeds, bs.negative_pooled_prompt_embeds = self._encode(
                pairs, per_encoder, None, max_length=bs.prompt_embeds.shape[1])
        for key in ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                    "negative_pooled_prompt_embeds"):
            value = getattr(bs, key)
            if value is not None:
                setattr(bs, key, value.to(dtype=dtype, device=device))
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLInputStep(InputStep):
    model_name = "stable-diffusion-xl"
    embed_names = [("prompt_embeds", "negative_prompt_embeds", False),
                   ("pooled_prompt_embeds", "negative_pooled_prompt_embeds", True)]


class StableDiffusionXLPrepareAdditionalConditioningStep(ModularPipelineBlocks):
    """SDXL micro-conditioning: original size, crop top-left and target size as `add_time_ids`."""

    model_name = "stable-diffusion-xl"

    @property
    def description(self) -> str:
        return ("Added conditioning for text-to-image: add_time_ids from original_size, crops_coords_top_left and "
                "target_size (negative variants default to the positive ones)")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("original_size", type_hint=tuple), InputParam("target_size", type_hint=tuple),
                InputParam("negative_original_size", type_hint=tuple),
                InputParam("negative_target_size", type_hint=tuple),
                InputParam("crops_coords_top_left", type_hint=tuple, default=(0, 0)),
                InputParam("negative_crops_coords_top_left", type_hint=tuple, default=(0, 0)),
                InputParam("num_images_per_prompt", type_hint=int, default=1),
                InputParam("latents", type_hint=torch.Tensor, required=True),
                InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True),
                InputParam("batch_size", type_hint=int, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("add_time_ids", type_hint=torch.Tensor),
                OutputParam("negative_add_time_ids", type_hint=torch.Tensor)]

    def time_ids(self, components, bs, height: int, width: int) -> tuple[list, list]:
        original = tuple(bs.original_size or (height, width))
        target = tuple(bs.target_size or (height, width))
        crops = tuple(bs.crops_coords_top_left)
        ids = list(original + crops + target)
        if bs.negative_original_size is not None and bs.negative_target_size is not None:
            neg = list(tuple(bs.negative_original_size) + tuple(bs.negative_crops_coords_top_left)
                       + tuple(bs.negative_target_size))
        else:
            neg = ids
        return ids, neg

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        factor = vae_scale_factor(components)
        height, width = bs.latents.shape[-2] * factor, bs.latents.shape[-1] * factor
        ids, neg = self.time_ids(components, bs, height, width)
        unet = components.unet
        passed = unet.config.addition_time_embed_dim * len(ids) + int(bs.pooled_prompt_embeds.shape[-1])
        expected = unet.config.projection_class_embeddings_input_dim
        if expected is not None and passed != expected:
            name = type(self).__name__
            dim = unet.config.addition_time_embed_dim
            refiner = getattr(components, "requires_aesthetics_score", False)
            if expected - passed == dim:
                hint = " The UNet does not use aesthetic scores: set requires_aesthetics_score=False."
            elif passed - expected == dim and refiner:
                hint = (" The UNet is a refiner (requires_aesthetics_score=True): it runs image-to-image only; "
                        "pass `image` (pixels or the base pipeline's latents).")
            elif passed - expected == dim:
                hint = " The UNet expects aesthetic-score conditioning (a refiner): set requires_aesthetics_score=True."
            else:
                hint = ""
            raise BlockInputError(f"Block {name!r}: the UNet's added conditioning has {expected} inputs but the "
                                  f"time ids and pooled embeddings give {passed}.{hint}", block=name,
                                  input_name="pooled_prompt_embeds")
        total = bs.batch_size * int(bs.num_images_per_prompt or 1)
        dtype, device = bs.pooled_prompt_embeds.dtype, bs.latents.device
        bs.add_time_ids = torch.tensor([ids], dtype=dtype).repeat(total, 1).to(device)
        bs.negative_add_time_ids = torch.tensor([neg], dtype=dtype).repeat(total, 1).to(device)
        self.set_block_state(state, bs)
        return components, state


class StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep(StableDiffusionXLPrepareAdditionalConditioningStep):
    """Refiner-style UNets condition on an aesthetic score instead of the target size."""

    @property
    def description(self) -> str:
        return ("Added conditioning for image-to-image / inpainting: as text-to-image, or with aesthetic_score / "
                "negative_aesthetic_score when `requires_aesthetics_score` (refiner UNets)")

    @property
    def expected_configs(self) -> list[ConfigSpec]:
        return [ConfigSpec("requires_aesthetics_score", False)]

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [InputParam("aesthetic_score", type_hint=float, default=6.0),
                                 InputParam("negative_aesthetic_score", type_hint=float, default=2.5)]

    def time_ids(self, components, bs, height: int, width: int) -> tuple[list, list]:
        original = tuple(bs.original_size or (height, width))
        target = tuple(bs.target_size or (height, width))
        neg_original = tuple(bs.negative_original_size or original)
        neg_target = tuple(bs.negative_target_size or target)
        crops = tuple(bs.crops_coords_top_left)
        if getattr(components, "requires_aesthetics_score", False):
            return (list(original + crops + (bs.aesthetic_score,)),
                    list(neg_original + tuple(bs.negative_crops_coords_top_left) + (bs.negative_aesthetic_score,)))
        # the standard pipeline uses the positive crop coordinates for the negative ids here
        return list(original + crops + target), list(neg_original + crops + neg_target)


# -- SDXL names for the shared steps (what the Modular Diffusers docs call them) --------------------------------
class StableDiffusionXLSetTimestepsStep(SetTimestepsStep):
    model_name = "stable-diffusion-xl"


class StableDiffusionXLImg2ImgSetTimestepsStep(Img2ImgSetTimestepsStep):
    model_name = "stable-diffusion-xl"
    default_strength = 0.3


class StableDiffusionXLInpaintSetTimestepsStep(Img2ImgSetTimestepsStep):
    model_name = "stable-diffusion-xl"
    default_strength = 0.9999


class StableDiffusionXLPrepareLatentsStep(PrepareLatentsStep):
    model_name = "stable-diffusion-xl"


class StableDiffusionXLImg2ImgPrepareLatentsStep(Img2ImgPrepareLatentsStep):
    model_name = "stable-diffusion-xl"


class StableDiffusionXLVaeEncoderStep(VaeEncoderStep):
    model_name = "stable-diffusion-xl"


class StableDiffusionXLLoopBeforeDenoiser(LoopBeforeDenoiser):
    model_name = "stable-diffusion-xl"


_XL_FIELDS = {
    "encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds"),
    "text_embeds": ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
    "time_ids": ("add_time_ids", "negative_add_time_ids"),
}


class StableDiffusionXLLoopDenoiser(LoopDenoiser):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE
    guider_input_fields = _XL_FIELDS


class StableDiffusionXLControlNetLoopDenoiser(ControlNetLoopDenoiser):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE
    guider_input_fields = _XL_FIELDS


class StableDiffusionXLLoopAfterDenoiser(LoopAfterDenoiser):
    model_name = "stable-diffusion-xl"


def _xl_callback_views() -> dict[str, TensorView]:
    """StableDiffusionXLPipeline's `_callback_tensor_inputs`, in its [negative, positive] layout under CFG."""
    return {"latents": attr_view("latents", refresh=False),
            "prompt_embeds": concat_view("prompt_embeds", "negative_prompt_embeds"),
            "add_text_embeds": concat_view("pooled_prompt_embeds", "negative_pooled_prompt_embeds"),
            "add_time_ids": concat_view("add_time_ids", "negative_add_time_ids")}


class StableDiffusionXLDenoiseLoopWrapper(DenoiseLoopWrapper):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE

    def callback_tensor_views(self) -> dict[str, TensorView]:
        return _xl_callback_views()


class StableDiffusionXLDenoiseStep(StableDiffusionXLDenoiseLoopWrapper):
    block_classes = [StableDiffusionXLLoopBeforeDenoiser, StableDiffusionXLLoopDenoiser,
                     StableDiffusionXLLoopAfterDenoiser]


class StableDiffusionXLInpaintDenoiseStep(InpaintDenoiseStep):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE

    def callback_tensor_views(self) -> dict[str, TensorView]:
        return _xl_callback_views()
    block_classes = [InpaintLoopBeforeDenoiser, StableDiffusionXLLoopDenoiser, InpaintLoopAfterDenoiser]


class StableDiffusionXLControlNetDenoiseStep(ControlNetDenoiseStep):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE

    def callback_tensor_views(self) -> dict[str, TensorView]:
        return _xl_callback_views()
    block_classes = [LoopBeforeDenoiser, StableDiffusionXLControlNetLoopDenoiser, LoopAfterDenoiser]


class StableDiffusionXLInpaintControlNetDenoiseStep(InpaintControlNetDenoiseStep):
    model_name = "stable-diffusion-xl"
    default_guidance_scale = XL_GUIDANCE

    def callback_tensor_views(self) -> dict[str, TensorView]:
        return _xl_callback_views()
    block_classes = [InpaintLoopBeforeDenoiser, StableDiffusionXLControlNetLoopDenoiser, InpaintLoopAfterDenoiser]


class StableDiffusionXLDecodeStep(DecodeStep):
    model_name = "stable-diffusion-xl"


# -- block dicts ---------------------------------------------------------------------------------------------------
TEXT2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionXLTextEncoderStep),
    ("input", StableDiffusionXLInputStep),
    ("set_timesteps", StableDiffusionXLSetTimestepsStep),
    ("prepare_latents", StableDiffusionXLPrepareLatentsStep),
    ("prepare_add_cond", StableDiffusionXLPrepareAdditionalConditioningStep),
    ("denoise", StableDiffusionXLDenoiseStep),
    ("decode", StableDiffusionXLDecodeStep),
])

IMAGE2IMAGE_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionXLTextEncoderStep),
    ("input", StableDiffusionXLInputStep),
    ("vae_encoder", StableDiffusionXLVaeEncoderStep),
    ("set_timesteps", StableDiffusionXLImg2ImgSetTimestepsStep),
    ("prepare_latents", StableDiffusionXLImg2ImgPrepareLatentsStep),
    ("prepare_add_cond", StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep),
    ("denoise", StableDiffusionXLDenoiseStep),
    ("decode", StableDiffusionXLDecodeStep),
])

INPAINT_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionXLTextEncoderStep),
    ("input", StableDiffusionXLInputStep),
    ("vae_encoder", InpaintVaeEncoderStep),
    ("set_timesteps", StableDiffusionXLInpaintSetTimestepsStep),
    ("prepare_latents", InpaintPrepareLatentsStep),
    ("prepare_add_cond", StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep),
    ("denoise", StableDiffusionXLInpaintDenoiseStep),
    ("decode", InpaintDecodeStep),
])

CONTROLNET_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionXLTextEncoderStep),
    ("input", StableDiffusionXLInputStep),
    ("set_timesteps", StableDiffusionXLSetTimestepsStep),
    ("prepare_latents", StableDiffusionXLPrepareLatentsStep),
    ("prepare_add_cond", StableDiffusionXLPrepareAdditionalConditioningStep),
    ("controlnet_input", ControlNetInputStep),
    ("denoise", StableDiffusionXLControlNetDenoiseStep),
    ("decode", StableDiffusionXLDecodeStep),
])


# -- auto preset: the shared auto steps (presets.common) with the SDXL steps swapped in ------------------------
class StableDiffusionXLAutoVaeEncoderStep(AutoVaeEncoderStep):
    block_classes = [InpaintVaeEncoderStep, StableDiffusionXLVaeEncoderStep]


class StableDiffusionXLAutoSetTimestepsStep(AutoSetTimestepsStep):
    block_classes = [StableDiffusionXLInpaintSetTimestepsStep, StableDiffusionXLImg2ImgSetTimestepsStep,
                     StableDiffusionXLSetTimestepsStep]


class StableDiffusionXLAutoPrepareLatentsStep(AutoPrepareLatentsStep):
    block_classes = [InpaintPrepareLatentsStep, StableDiffusionXLImg2ImgPrepareLatentsStep,
                     StableDiffusionXLPrepareLatentsStep]


class StableDiffusionXLAutoPrepareAddCondStep(AutoPipelineBlocks):
    block_classes = [StableDiffusionXLImg2ImgPrepareAdditionalConditioningStep,
                     StableDiffusionXLPrepareAdditionalConditioningStep]
    block_names = ["img2img", "text2img"]
    block_trigger_inputs = ["image", None]

    @property
    def description(self) -> str:
        return "Added conditioning: `image` -> img2img variant (aesthetic scores for refiners), else text2img"


StableDiffusionXLAutoControlNetInputStep = AutoControlNetInputStep  # the same step for every family


class StableDiffusionXLAutoControlNetDenoiseStep(AutoControlNetDenoiseStep):
    block_classes = [StableDiffusionXLInpaintControlNetDenoiseStep, StableDiffusionXLControlNetDenoiseStep]


class StableDiffusionXLAutoDenoiseStep(AutoDenoiseStep):
    block_classes = [StableDiffusionXLAutoControlNetDenoiseStep, StableDiffusionXLInpaintDenoiseStep,
                     StableDiffusionXLDenoiseStep]


class StableDiffusionXLAutoDecodeStep(AutoDecodeStep):
    block_classes = [InpaintDecodeStep, StableDiffusionXLDecodeStep]


AUTO_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionXLTextEncoderStep),
    ("input", StableDiffusionXLInputStep),
    ("vae_encoder", StableDiffusionXLAutoVaeEncoderStep),
    ("set_timesteps", StableDiffusionXLAutoSetTimestepsStep),
    ("prepare_latents", StableDiffusionXLAutoPrepareLatentsStep),
    ("prepare_add_cond", StableDiffusionXLAutoPrepareAddCondStep),
    ("controlnet_input", StableDiffusionXLAutoControlNetInputStep),
    ("denoise", StableDiffusionXLAutoDenoiseStep),
    ("decode", StableDiffusionXLAutoDecodeStep),
])


class StableDiffusionXLAutoBlocks(SequentialPipelineBlocks):
    """SDXL: text-to-image, image-to-image, inpainting and ControlNet in one block graph."""

    model_name = "stable-diffusion-xl"
    block_classes = list(AUTO_BLOCKS.values())
    block_names = list(AUTO_BLOCKS.keys())
    workflow_map = standard_workflows({"controlnet": {"control_image": True}})

    @property
    def description(self) -> str:
        return ("Auto pipeline for Stable Diffusion XL. Inputs select the workflow:\n"
                "  - `mask_image` + `image` -> inpainting\n"
                "  - `image` -> image-to-image (refiner UNets: set requires_aesthetics_score)\n"
                "  - `control_image` (with a `controlnet` component) -> ControlNet, combinable with the above\n"
                "  - otherwise text-to-image (`denoising_end` / `denoising_start` split base and refiner)")
