"""The Flux denoise loop: transformer passes planned by the guider, Euler steps, inpainting blends.

Everything that does not change between steps (the guider for this call, the guidance-embedding tensor, the
text fields of each pass, RoPE ids) is prepared once before the loop.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...blocks import (
    BlockInputError,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
)
from ...components.models.flux_transformer import FluxTransformer2DModel
from ...components.schedulers import FlowMatchEulerDiscreteScheduler
from ...components.spec import ComponentSpec
from ...runtime.callbacks import StepEndCallback, TensorView, attr_view, step_callback_inputs
from ..common.utils import check_finite, guider_for_call, guider_spec
from .utils import DEFAULT_TRUE_CFG_SCALE

logger = logging.getLogger(__name__)

__all__ = ["FluxDenoiseStep", "FluxImg2ImgDenoiseStep", "FluxInpaintDenoiseStep", "FluxInpaintLoopAfterDenoiser",
           "FluxLoopAfterDenoiser", "FluxLoopDenoiser"]


class FluxLoopDenoiser(ModularPipelineBlocks):
    """One step's transformer passes (conditional, plus unconditional under true CFG), combined by the guider."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Loop step: runs the transformer on the packed latents for every pass the guider plans (batched) "
                "and combines the predictions into noise_pred.")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("transformer", FluxTransformer2DModel), guider_spec(DEFAULT_TRUE_CFG_SCALE)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("latents", type_hint=torch.Tensor, required=True),
            InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("pooled_prompt_embeds", type_hint=torch.Tensor, required=True),
            InputParam("negative_prompt_embeds", type_hint=torch.Tensor),
            InputParam("negative_pooled_prompt_embeds", type_hint=torch.Tensor),
            InputParam("txt_ids", type_hint=torch.Tensor, required=True),
            InputParam("img_ids", type_hint=torch.Tensor, required=True),
            InputParam("joint_attention_kwargs", type_hint=dict,
                       description="extra attention arguments; 'scale' scales LoRA layers"),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("noise_pred", torch.Tensor, "guided velocity prediction of this step")]

    def __call__(self, components: Any, bs: Any, i: int, t: torch.Tensor):
        guider, transformer, latents = bs._guider, components.transformer, bs.latents
        guider.set_state(step=i, num_inference_steps=bs._num_steps, timestep=t)
        fields = {"hidden_states": latents, "timestep": t.expand(latents.shape[0]).to(latents.dtype) / 1000,
                  **bs._static_fields}
        preds: dict[str, torch.Tensor] = {}
        for group in guider.prepare_passes(fields, batched=True):
            with guider.perturbation(transformer, group):
                out = transformer(
                    hidden_states=group.hidden_states, timestep=group.timestep, guidance=group.guidance,
                    pooled_projections=group.pooled_projections, encoder_hidden_states=group.encoder_hidden_states,
                    txt_ids=bs.txt_ids, img_ids=bs.img_ids, joint_attention_kwargs=bs.joint_attention_kwargs,
                    return_dict=False,
                )[0]
            preds.update(group.split(out))
        bs.noise_pred = guider.combine(preds).pred
        return components, bs


class FluxLoopAfterDenoiser(ModularPipelineBlocks):
    """One Euler step of the flow ODE."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return "Loop step: scheduler.step from noise_pred to the next latents."

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", torch.Tensor)]

    def __call__(self, components: Any, bs: Any, i: int, t: torch.Tensor):
        dtype = bs.latents.dtype
        bs.latents = components.scheduler.step(bs.noise_pred, t, bs.latents, return_dict=False)[0].to(dtype)
        return components, bs


class FluxInpaintLoopAfterDenoiser(ModularPipelineBlocks):
    """Keeps the unmasked area on the image's own trajectory: it is replaced by the image latents noised to
    the next timestep."""

    model_name = "flux"

    @property
    def description(self) -> str:
        return ("Loop step (inpainting): after the Euler step, the area outside the mask is reset to the image "
                "latents noised to the next timestep (clean image latents after the last step).")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", FlowMatchEulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("mask", type_hint=torch.Tensor, required=True),
            InputParam("initial_latents", type_hint=torch.Tensor, required=True),
            InputParam("initial_noise", type_hint=torch.Tensor, required=True),
            InputParam("timesteps", type_hint=torch.Tensor, required=True),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", torch.Tensor)]

    def __call__(self, components: Any, bs: Any, i: int, t: torch.Tensor):
        if i == 0:
            bs._keep = 1 - bs.mask
        image_latents = bs.initial_latents
        if i < len(bs.timesteps) - 1:
            image_latents = components.scheduler.scale_noise(image_latents, bs.timesteps[i + 1:i + 2],
                                                             bs.initial_noise)
        bs.latents = bs._keep * image_latents + bs.mask * bs.latents
        return components, bs


class FluxDenoiseStep(LoopSequentialPipelineBlocks):
    """Iterates the timesteps; prepares the per-call guider and the step-invariant model inputs first."""

    model_name = "flux"
    block_classes = [FluxLoopDenoiser, FluxLoopAfterDenoiser]
    block_names = ["denoiser", "after_denoiser"]
    # the standard FluxPipeline defaults to 3.5, FluxImg2ImgPipeline and FluxInpaintPipeline to 7.0
    default_guidance_scale = 3.5

    @property
    def description(self) -> str:
        return ("Denoise step: for each timestep, the transformer passes the guider plans (one by default; true CFG "
                "adds the negative prompt's) and an Euler step. `guidance_scale` feeds the distilled guidance "
                "embedding (FLUX.1-dev); `true_cfg_scale` sets the guider's scale for this call.")

    @property
    def loop_expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("transformer", FluxTransformer2DModel), guider_spec(DEFAULT_TRUE_CFG_SCALE)]

    @property
    def loop_inputs(self) -> list[InputParam]:
        return [
            InputParam("latents", type_hint=torch.Tensor, required=True, description="packed initial latents"),
            InputParam("timesteps", type_hint=torch.Tensor, required=True),
            InputParam("num_inference_steps", type_hint=int, required=True),
            InputParam("guidance_scale", type_hint=float, default=self.default_guidance_scale,
                       description="distilled guidance embedding value (ignored by models without one)"),
            InputParam("true_cfg_scale", type_hint=float,
                       description="true CFG scale for this call (needs a negative prompt; default: guider's)"),
            *step_callback_inputs(),
        ]

    def callback_tensor_views(self) -> dict[str, TensorView]:
        """FluxPipeline's `_callback_tensor_inputs` (packed latents, T5 prompt embeddings)."""
        return {"latents": attr_view("latents", refresh=False), "prompt_embeds": attr_view("prompt_embeds")}

    @property
    def loop_intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", torch.Tensor, "denoised packed latents")]

    def _prepare(self, components: Any, bs: Any) -> None:
        name = type(self).__name__
        check_finite(name, "true_cfg_scale", bs.true_cfg_scale)
        check_finite(name, "guidance_scale", bs.guidance_scale)
        guider = guider_for_call(components, bs.true_cfg_scale, block=name)
        negatives = bs.negative_prompt_embeds is not None and bs.negative_pooled_prompt_embeds is not None
        if guider.requires_unconditional and not negatives:
            logger.info("%s: no negative prompt embeddings; running without true CFG.", name)
            guider = guider.with_overrides(guidance_scale=1.0)
            if guider.requires_unconditional:
                raise BlockInputError(f"Block {name!r}: the guider {type(guider).__name__} needs unconditional "
                                      f"inputs; give a 'negative_prompt'.", block=name, input_name="negative_prompt")
        bs._guider = guider
        bs._num_steps = len(bs.timesteps)
        latents, transformer = bs.latents, components.transformer
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((latents.shape[0],), float(bs.guidance_scale), device=latents.device,
                                  dtype=torch.float32)
        bs._static_fields = {"guidance": guidance}
        self._text_fields(bs)

    @staticmethod
    def _text_fields(bs: Any) -> None:
        """The (cond, uncond) text inputs of each pass; rebuilt when a step callback changes the embeddings."""
        bs._static_fields["encoder_hidden_states"] = (bs.prompt_embeds, bs.negative_prompt_embeds)
        bs._static_fields["pooled_projections"] = (bs.pooled_prompt_embeds, bs.negative_pooled_prompt_embeds)

    def __call__(self, components: Any, state: Any):
        bs = self.get_block_state(state)
        self._prepare(components, bs)
        callback = StepEndCallback.resolve(type(self).__name__, bs.callback_on_step_end,
                                           bs.callback_on_step_end_tensor_inputs, self.callback_tensor_views())
        for i, t in enumerate(self.progress_bar(bs.timesteps)):
            components, bs = self.loop_step(components, bs, i=i, t=t)
            if callback is not None:
                refresh, stop = callback(components, bs, i, t)
                if refresh:
                    self._text_fields(bs)  # step-invariant fields from the changed embeddings
                if stop:
                    break
        self.set_block_state(state, bs)
        return components, state


class FluxImg2ImgDenoiseStep(FluxDenoiseStep):
    """The text-to-image loop with the image-to-image default guidance scale (7.0, as FluxImg2ImgPipeline)."""

    default_guidance_scale = 7.0


class FluxInpaintDenoiseStep(FluxDenoiseStep):
    default_guidance_scale = 7.0
    block_classes = [FluxLoopDenoiser, FluxLoopAfterDenoiser, FluxInpaintLoopAfterDenoiser]
    block_names = ["denoiser", "after_denoiser", "inpaint_blend"]

    @property
    def description(self) -> str:
        return super().description + " Inpainting: the unmasked area follows the image's noised latents."
