"""Shared SD/SDXL denoise loop: loop steps (before / denoiser / after) and the loop wrappers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ...blocks import (
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
)
from ...components.models import ControlNetModel, UNet2DConditionModel
from ...components.schedulers import (
    EulerDiscreteScheduler,
)
from ...components.spec import ComponentSpec
from ...runtime.callbacks import StepEndCallback, TensorView, attr_view, concat_view, step_callback_inputs
from .ip_adapter import image_embeds_field
from .utils import (
    guidance_inputs,
    guider_for_call,
    guider_spec,
)

__all__ = [
    "ControlNetDenoiseStep", "ControlNetLoopDenoiser", "DenoiseLoopWrapper", "DenoiseStep",
    "InpaintControlNetDenoiseStep", "InpaintDenoiseStep", "InpaintLoopAfterDenoiser", "InpaintLoopBeforeDenoiser",
    "LoopAfterDenoiser", "LoopBeforeDenoiser", "LoopDenoiser", "guidance_scale_embedding",
]


class LoopBeforeDenoiser(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Loop step: scale the latents for the scheduler (`scaled_latents`)"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor, required=True)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        block_state.scaled_latents = components.scheduler.scale_model_input(block_state.latents, t)
        return components, block_state


class InpaintLoopBeforeDenoiser(LoopBeforeDenoiser):
    @property
    def description(self) -> str:
        return "Loop step: scale the latents; for 9-channel UNets append the mask and masked-image latents"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("latents", type_hint=torch.Tensor, required=True),
                InputParam("mask", type_hint=torch.Tensor, required=True),
                InputParam("masked_image_latents", type_hint=torch.Tensor)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        scaled = components.scheduler.scale_model_input(block_state.latents, t)
        if components.unet.config.in_channels != scaled.shape[1]:
            scaled = torch.cat([scaled, block_state.mask, block_state.masked_image_latents], dim=1)
        block_state.scaled_latents = scaled
        return components, block_state


class LoopDenoiser(ModularPipelineBlocks):
    """Runs the UNet on the guider's passes (cond and uncond batched in one call) and combines them."""

    model_name = "stable-diffusion"
    default_guidance_scale = 7.5
    # UNet keyword -> (conditional, unconditional) state names; SDXL adds text_embeds / time_ids
    guider_input_fields: dict[str, tuple[str, str]] = {
        "encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds"),
    }
    # optional (cond, uncond) lists of per-adapter tensors: IP-Adapter image embeddings (see common.ip_adapter)
    optional_guider_fields: dict[str, tuple[str, str]] = {
        "image_embeds": ("ip_adapter_embeds", "negative_ip_adapter_embeds"),
    }
    _added_cond_keys = ("text_embeds", "time_ids", "image_embeds")

    @property
    def description(self) -> str:
        return "Loop step: UNet prediction for each guidance pass, combined by the guider into `noise_pred`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        params = [InputParam("cross_attention_kwargs", type_hint=dict), InputParam("timestep_cond")]
        for cond, uncond in self.guider_input_fields.values():
            params += [InputParam(cond, type_hint=torch.Tensor, required=True),
                       InputParam(uncond, type_hint=torch.Tensor)]
        for cond, uncond in self.optional_guider_fields.values():
            params += [InputParam(cond, type_hint=list), InputParam(uncond, type_hint=list)]
        return params

    def static_fields(self, block_state) -> dict[str, Any]:
        """The per-call (cond, uncond) inputs, built once per loop."""
        fields = block_state.__dict__.get("_guider_fields")
        if fields is None:
            fields = {key: (getattr(block_state, c), getattr(block_state, u))
                      for key, (c, u) in self.guider_input_fields.items()}
            for key, (c, u) in self.optional_guider_fields.items():
                if getattr(block_state, c) is not None:
                    batch = fields["encoder_hidden_states"][0].shape[0]
                    fields[key] = image_embeds_field(type(self).__name__, getattr(block_state, c),
                                                     getattr(block_state, u), batch)
            block_state.__dict__["_guider_fields"] = fields
        return fields

    def unet_kwargs(self, group) -> tuple[torch.Tensor, dict[str, Any]]:
        values = group.as_dict()
        sample = values.pop("sample")
        added = {}
        for key in self._added_cond_keys:
            if key in values:
                added[key] = values.pop(key)
        if added:
            if "image_embeds" in added:  # per-adapter dict (batched by the guider) -> the UNet's list
                added["image_embeds"] = list(added["image_embeds"].values())
            values["added_cond_kwargs"] = added
        return sample, values

    def predict(self, components, block_state, group, t, sample, kwargs) -> torch.Tensor:
        return components.unet(sample, t, timestep_cond=block_state.timestep_cond,
                               cross_attention_kwargs=block_state.cross_attention_kwargs,
                               return_dict=False, **kwargs)[0]

    def _loop_constants(self, components, block_state) -> tuple[Any, int]:
        """The guider and the evaluation count, resolved on the first step of a loop."""
        constants = block_state.__dict__.get("_denoiser_constants")
        if constants is None:
            guider = block_state["guider"] or components.guider
            # the guider's start/stop windows count model evaluations: len(timesteps) (PNDM/Heun: more than steps)
            timesteps = block_state["timesteps"]
            n = len(timesteps) if timesteps is not None else block_state.num_inference_steps
            constants = block_state.__dict__["_denoiser_constants"] = (guider, n)
        return constants

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        per_loop = block_state.__dict__  # what the first step resolved (looked up inline: this runs every step)
        guider, n = per_loop.get("_denoiser_constants") or self._loop_constants(components, block_state)
        guider.set_state(i, n, t)
        static = per_loop.get("_guider_fields")
        fields = {"sample": block_state.scaled_latents,
                  **(static if static is not None else self.static_fields(block_state))}
        preds: dict[str, torch.Tensor] = {}
        unet = components.unet
        for group in guider.prepare_passes(fields, batched=True):
            sample, kwargs = self.unet_kwargs(group)
            if group.perturbed:
                with guider.perturbation(unet, group):
                    out = self.predict(components, block_state, group, t, sample, kwargs)
            else:
                out = self.predict(components, block_state, group, t, sample, kwargs)
            preds.update(group.split(out))
        block_state.noise_pred = guider.combine(preds).pred
        return components, block_state


class ControlNetLoopDenoiser(LoopDenoiser):
    """LoopDenoiser with ControlNet residuals (one or several ControlNets, scheduled by controlnet_keep)."""

    @property
    def description(self) -> str:
        return "Loop step: ControlNet residuals then the UNet, per guidance pass (guess mode: cond pass only)"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("unet", UNet2DConditionModel),
                ComponentSpec("controlnet", ControlNetModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [
            InputParam("controlnet_cond", required=True), InputParam("conditioning_scale"),
            InputParam("guess_mode", type_hint=bool, default=False), InputParam("controlnet_keep", required=True)]

    def predict(self, components, block_state, group, t, sample, kwargs) -> torch.Tensor:
        i = block_state.__dict__["_step"]
        keep = block_state.controlnet_keep[i]
        nets = components.controlnet
        nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
        conds = block_state.controlnet_cond
        conds = conds if isinstance(conds, list) else [conds]
        scales = block_state.conditioning_scale
        scales = scales if isinstance(scales, list) else [scales] * len(nets)
        keeps = keep if isinstance(keep, list) else [keep] * len(nets)
        guess = bool(block_state.guess_mode)
        if guess and len(group.identifiers) > 1:
            # guess mode: ControlNet sees only the conditional batch; uncond residuals are zeros
            cond_index = group.identifiers.index("pred_cond") if "pred_cond" in group.identifiers else None
        else:
            cond_index = None
        sizes = group.sizes
        if cond_index is not None:
            start = sum(sizes[:cond_index])
            sl = slice(start, start + sizes[cond_index])
            c_sample, c_kwargs = sample[sl], {k: _slice(v, sl) for k, v in kwargs.items()}
        else:
            c_sample, c_kwargs = sample, kwargs
        down, mid = None, None
        repeated = block_state.__dict__.setdefault("_repeated_cond", {})  # per call: built on the first step
        for net, cond, scale, k in zip(nets, conds, scales, keeps):
            image = cond
            reps = c_sample.shape[0] // image.shape[0]
            if reps > 1:
                entry = repeated.get((id(cond), reps))
                if entry is None or entry[0] is not cond:
                    entry = repeated[(id(cond), reps)] = (cond, torch.cat([cond] * reps))
                image = entry[1]
            # a 9-channel inpainting UNet's input carries mask + masked-image latents after the latents;
            # the ControlNet sees the latents only (as the standard pipelines do)
            net_sample = c_sample[:, :net.config.in_channels] if c_sample.shape[1] > net.config.in_channels \
                else c_sample
            d, m = net(net_sample, t, encoder_hidden_states=c_kwargs["encoder_hidden_states"], controlnet_cond=image,
                       conditioning_scale=scale * k, guess_mode=guess,
                       added_cond_kwargs=c_kwargs.get("added_cond_kwargs"), return_dict=False)
            if down is None:
                down, mid = list(d), m
            else:
                down = [a + b for a, b in zip(down, d)]
                mid = mid + m
        if cond_index is not None:
            down = [_pad_passes(x, sizes, cond_index) for x in down]
            mid = _pad_passes(mid, sizes, cond_index)
        return components.unet(sample, t, timestep_cond=block_state.timestep_cond,
                               cross_attention_kwargs=block_state.cross_attention_kwargs,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False, **kwargs)[0]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        block_state.__dict__["_step"] = i
        return super().__call__(components, block_state, i, t)


def _slice(value: Any, sl: slice) -> Any:
    if isinstance(value, torch.Tensor):
        return value[sl]
    if isinstance(value, dict):
        return {k: _slice(v, sl) for k, v in value.items()}
    return value


def _pad_passes(x: torch.Tensor, sizes: list[int], index: int) -> torch.Tensor:
    parts = [x if j == index else torch.zeros((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
             for j, n in enumerate(sizes)]
    return torch.cat(parts)


class LoopAfterDenoiser(ModularPipelineBlocks):
    model_name = "stable-diffusion"

    @property
    def description(self) -> str:
        return "Loop step: scheduler step from `noise_pred` to the next `latents`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("eta", type_hint=float, default=0.0), InputParam("generator")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("latents", type_hint=torch.Tensor, description="denoised latents")]

    @staticmethod
    def step_kwargs(components, block_state) -> dict[str, Any]:
        kwargs = block_state.__dict__.get("_step_kwargs")
        if kwargs is None:
            params = inspect.signature(components.scheduler.step).parameters
            kwargs = {}
            if "eta" in params:
                kwargs["eta"] = block_state.eta
            if "generator" in params:
                kwargs["generator"] = block_state.generator
            block_state.__dict__["_step_kwargs"] = kwargs
        return kwargs

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        dtype = block_state.latents.dtype
        kwargs = block_state.__dict__.get("_step_kwargs")
        if kwargs is None:
            kwargs = self.step_kwargs(components, block_state)
        latents = components.scheduler.step(block_state.noise_pred, t, block_state.latents, **kwargs,
                                            return_dict=False)[0]
        block_state.latents = latents if latents.dtype == dtype else latents.to(dtype)
        return components, block_state


class InpaintLoopAfterDenoiser(LoopAfterDenoiser):
    @property
    def description(self) -> str:
        return "Loop step: scheduler step; for 4-channel UNets keep the unmasked area from the noised image latents"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("scheduler", EulerDiscreteScheduler), ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return super().inputs + [InputParam("mask", type_hint=torch.Tensor, required=True),
                                 InputParam("noise", type_hint=torch.Tensor),
                                 InputParam("image_latents", type_hint=torch.Tensor),
                                 InputParam("timesteps", type_hint=torch.Tensor, required=True)]

    def __call__(self, components, block_state, i: int, t: torch.Tensor):
        components, block_state = super().__call__(components, block_state, i, t)
        if components.unet.config.in_channels == block_state.latents.shape[1]:
            proper = block_state.image_latents
            if i < len(block_state.timesteps) - 1:
                next_t = block_state.timesteps[i + 1]
                proper = components.scheduler.add_noise(proper, block_state.noise, torch.tensor([next_t]))
            mask = block_state.mask
            block_state.latents = (1 - mask) * proper + mask * block_state.latents
        return components, block_state


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
                             ) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale (VDM / LCM): (len(w), embedding_dim)."""
    w = w * 1000.0
    half = embedding_dim // 2
    freq = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w.to(dtype)[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class DenoiseLoopWrapper(LoopSequentialPipelineBlocks):
    """Iterates the timesteps; the guider (with per-call overrides) is resolved once before the loop."""

    model_name = "stable-diffusion"
    default_guidance_scale = 7.5
    # subclasses give the three loop steps (before / denoiser / after) in `block_classes`
    block_names = ["before_denoiser", "denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Denoise loop: runs before_denoiser -> denoiser -> after_denoiser for every timestep"

    @property
    def loop_expected_components(self) -> list[ComponentSpec]:
        return [guider_spec(self.default_guidance_scale), ComponentSpec("scheduler", EulerDiscreteScheduler),
                ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def loop_inputs(self) -> list[InputParam]:
        return [InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("num_inference_steps", type_hint=int, required=True),
                *step_callback_inputs(),
                *guidance_inputs()]

    def callback_tensor_views(self) -> dict[str, TensorView]:
        """The reference pipeline's `_callback_tensor_inputs` for this loop, read from / written to its state."""
        return {"latents": attr_view("latents", refresh=False),
                "prompt_embeds": concat_view("prompt_embeds", "negative_prompt_embeds"),
                "negative_prompt_embeds": TensorView(lambda bs: bs.negative_prompt_embeds)}

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.guider = guider_for_call(components, bs.guidance_scale, bs.guidance_rescale, block=type(self).__name__)
        dim = getattr(components.unet.config, "time_cond_proj_dim", None)
        if dim is not None and bs["timestep_cond"] is None and "latents" in bs:
            # guidance-distilled UNets (LCM) take the guidance scale as an embedding
            # and run a single conditional pass, as the standard pipelines do
            scale = getattr(bs.guider, "guidance_scale", 1.0)
            w = torch.full((bs.latents.shape[0],), scale - 1.0)
            bs.timestep_cond = guidance_scale_embedding(w, dim).to(device=bs.latents.device, dtype=bs.latents.dtype)
            if hasattr(bs.guider, "guidance_scale"):
                bs.guider = bs.guider.with_overrides(guidance_scale=1.0)
        callback = StepEndCallback.resolve(type(self).__name__, bs.callback_on_step_end,
                                           bs.callback_on_step_end_tensor_inputs, self.callback_tensor_views())
        for i, t in enumerate(self.progress_bar(bs.timesteps)):
            components, bs = self.loop_step(components, bs, i=i, t=t)
            if callback is not None:
                refresh, stop = callback(components, bs, i, t)
                if refresh:
                    bs.__dict__.pop("_guider_fields", None)  # rebuilt from the changed embeddings
                if stop:
                    break
        self.set_block_state(state, bs)
        return components, state


class DenoiseStep(DenoiseLoopWrapper):
    block_classes = [LoopBeforeDenoiser, LoopDenoiser, LoopAfterDenoiser]


class InpaintDenoiseStep(DenoiseLoopWrapper):
    block_classes = [InpaintLoopBeforeDenoiser, LoopDenoiser, InpaintLoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "Inpainting denoise loop (mask-aware before/after steps)"


class ControlNetDenoiseStep(DenoiseLoopWrapper):
    block_classes = [LoopBeforeDenoiser, ControlNetLoopDenoiser, LoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "ControlNet denoise loop"


class InpaintControlNetDenoiseStep(DenoiseLoopWrapper):
    block_classes = [InpaintLoopBeforeDenoiser, ControlNetLoopDenoiser, InpaintLoopAfterDenoiser]

    @property
    def description(self) -> str:
        return "Inpainting ControlNet denoise loop"
