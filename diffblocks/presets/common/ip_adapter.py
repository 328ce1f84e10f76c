"""IP-Adapter steps shared by SD 1.x and SDXL: CLIP image embeddings of `ip_adapter_image` for the UNet.

The adapter weights live on the UNet (`pipe.load_ip_adapter(...)`, `set_ip_adapter_scale`); these steps only
make the embeddings: one (1, images, dim) tensor per loaded adapter, and all-zero embeddings as the negative
when the guider runs an unconditional pass (as the reference pipelines do). The denoise loop hands them to
the UNet as ``added_cond_kwargs["image_embeds"]``, batched with the guider's passes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ...blocks import AutoPipelineBlocks, BlockInputError, InputParam, ModularPipelineBlocks, OutputParam
from ...components.adapters.ip_adapter import num_ip_adapters
from ...components.models import UNet2DConditionModel
from ...components.spec import ComponentSpec
from .utils import (
    as_list,
    execution_device,
    guider_for_call,
    guider_spec,
    optional_component,
    repeat_to_batch,
)

__all__ = ["AutoIPAdapterStep", "IPAdapterStep", "image_embeds_field"]


class IPAdapterStep(ModularPipelineBlocks):
    """`ip_adapter_image` (or precomputed `ip_adapter_image_embeds`) -> `ip_adapter_embeds` and, for guidance,
    `negative_ip_adapter_embeds` (zeros)."""

    model_name = "stable-diffusion"
    default_guidance_scale = 7.5

    @property
    def description(self) -> str:
        return ("IP-Adapter step: CLIP image embeddings of `ip_adapter_image` (one image or list per loaded adapter) "
                "for the UNet's IP-Adapter layers; load the weights with pipe.load_ip_adapter(...) first")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("image_encoder", CLIPVisionModelWithProjection),
                ComponentSpec("feature_extractor", CLIPImageProcessor, config={"size": 224, "crop_size": 224},
                              default_creation_method="from_config"),
                ComponentSpec("unet", UNet2DConditionModel), guider_spec(self.default_guidance_scale)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("ip_adapter_image", description="image(s) for the IP-Adapter: one per loaded adapter "
                                                           "(an adapter's entry may be a list of images)"),
                InputParam("ip_adapter_image_embeds", type_hint=list,
                           description="precomputed embeddings, one (batch, images, dim) tensor per adapter; under "
                                       "guidance each is torch.cat([negative, positive]) as in the reference"),
                InputParam("guidance_scale", type_hint=float)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("ip_adapter_embeds", type_hint=list, description="image embeddings, one per adapter"),
                OutputParam("negative_ip_adapter_embeds", type_hint=list,
                            description="negative (zero) image embeddings, or None when guidance is off")]

    def _error(self, message: str, input_name: str) -> BlockInputError:
        name = type(self).__name__
        return BlockInputError(f"Block {name!r}: {message}", block=name, input_name=input_name)

    def _encode(self, components: Any, image: Any, device: torch.device) -> torch.Tensor:
        encoder = optional_component(components, "image_encoder")
        if encoder is None:
            raise self._error("needs the 'image_encoder' component (transformers CLIPVisionModelWithProjection) to "
                              "embed ip_adapter_image; load it (pipe.update_components(image_encoder=...)) or pass "
                              "ip_adapter_image_embeds.", "ip_adapter_image")
        if not isinstance(image, torch.Tensor):
            extractor = optional_component(components, "feature_extractor")
            if extractor is None:
                raise self._error("needs the 'feature_extractor' component (CLIPImageProcessor) to preprocess "
                                  "ip_adapter_image.", "ip_adapter_image")
            image = extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=next(encoder.parameters()).dtype)
        return encoder(image).image_embeds

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        count = num_ip_adapters(components.unet)
        if not count:
            raise self._error("no IP-Adapter is loaded on the unet; call pipe.load_ip_adapter(...) first (or "
                              "remove this step).", "ip_adapter_image")
        negative_needed = guider_for_call(components, bs.guidance_scale, for_text=True).requires_unconditional
        device = execution_device(components)
        positive, negative = [], []
        if bs.ip_adapter_image_embeds is not None:
            given = as_list(bs.ip_adapter_image_embeds)
            if len(given) != count:
                raise self._error(f"ip_adapter_image_embeds holds {len(given)} tensors for {count} loaded "
                                  f"IP-Adapter(s); give one per adapter.", "ip_adapter_image_embeds")
            for embeds in given:
                if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
                    raise self._error("each ip_adapter_image_embeds entry must be a (batch, images, dim) tensor.",
                                      "ip_adapter_image_embeds")
                embeds = embeds.to(device)
                if negative_needed:
                    neg, embeds = embeds.chunk(2)
                    negative.append(neg)
                positive.append(embeds)
        elif bs.ip_adapter_image is not None:
            images = bs.ip_adapter_image if isinstance(bs.ip_adapter_image, list) else [bs.ip_adapter_image]
            if len(images) != count:
                raise self._error(f"ip_adapter_image holds {len(images)} entries for {count} loaded IP-Adapter(s); "
                                  f"give one image (or list of images) per adapter.", "ip_adapter_image")
            for image in images:
                embeds = self._encode(components, image, device)
                positive.append(embeds[None])
                negative.append(torch.zeros_like(embeds)[None])
        else:
            raise self._error("give ip_adapter_image or ip_adapter_image_embeds.", "ip_adapter_image")
        bs.ip_adapter_embeds = positive
        bs.negative_ip_adapter_embeds = negative if negative_needed else None
        self.set_block_state(state, bs)
        return components, state


class AutoIPAdapterStep(AutoPipelineBlocks):
    """Runs the IP-Adapter step when `ip_adapter_image` or `ip_adapter_image_embeds` is given, else nothing."""

    block_classes = [IPAdapterStep, IPAdapterStep]
    block_names = ["ip_adapter_image", "ip_adapter_embeds"]
    block_trigger_inputs = ["ip_adapter_image", "ip_adapter_image_embeds"]

    @property
    def description(self) -> str:
        return "IP-Adapter: image embeddings when `ip_adapter_image` (or `ip_adapter_image_embeds`) is given"


def image_embeds_field(block: str, positive: list[torch.Tensor], negative: list[torch.Tensor] | None,
                       batch: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The denoiser's (cond, uncond) `image_embeds` guider field: per adapter, tiled to the prompt batch (zeros
    for a missing negative, the reference's unconditional image embedding)."""
    cond, uncond = {}, {}
    for i, embeds in enumerate(positive):
        key = str(i)
        cond[key] = repeat_to_batch(block, "ip_adapter_embeds", embeds, batch)
        neg = negative[i] if negative is not None else torch.zeros_like(embeds)
        uncond[key] = repeat_to_batch(block, "negative_ip_adapter_embeds", neg, batch)
    return cond, uncond
