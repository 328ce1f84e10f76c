"""Conditioning and sampling nodes: CLIPTextEncode, EmptyLatentImage, KSampler, KSamplerAdvanced, FluxGuidance.

They run the preset blocks of the checkpoint's family: CLIPTextEncode is the family's text-encoder step (prompt
only: negatives are separate CONDITIONING inputs of the sampler); a sampler is the family's text-to-image (or
image-to-image) block dict without its text-encoder and VAE-encoder stages (its decode stage returns the latents
undecoded), fed the embeddings, the seed as a CPU `torch.Generator` (as ComfyUI draws its noise on the CPU) and
the scheduler that `sampler_name` / `scheduler` select (samplers.py). So a workflow gives the image the Python
preset gives for the same prompt, seed, steps, CFG, scheduler and size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from .adapters import active_loras
from .base import MAX_RESOLUTION, MAX_SEED, Node, combo, float_spec, int_spec, socket, string_spec
from .samplers import SAMPLER_NAMES, SCHEDULER_NAMES, check_sampler, make_scheduler
from .values import Conditioning, ModelHandle, family_module, image_to_nchw

__all__ = ["CLIPTextEncode", "EmptyLatentImage", "FluxGuidance", "KSampler", "KSamplerAdvanced", "sample"]


class CLIPTextEncode(Node):
    CATEGORY = "conditioning"
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    DESCRIPTION = ("Encodes a text prompt with the checkpoint's text encoder(s) (the family's text-encoder block) "
                   "into an embedding that guides the sampler.")
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("A conditioning containing the embedded text used to guide the diffusion model.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"text": string_spec(multiline=True, dynamicPrompts=True,
                                                 tooltip="The text to be encoded."),
                             "clip": socket("CLIP", tooltip="The CLIP model used for encoding the text.")}}

    def run(self, ctx, clip, text):
        module = family_module(clip.family)
        blocks = {"text_encoder": module.TEXT2IMAGE_BLOCKS["text_encoder"]}
        pipe = ctx.pipeline(blocks)
        accepted = ctx.block_inputs(blocks)
        components = {name: getattr(clip.pipe, name, None) for name in pipe.pretrained_component_names}
        kwargs: dict[str, Any] = {"prompt": text}
        if clip.family != "flux" and "guidance_scale" in accepted:
            kwargs["guidance_scale"] = 1.0  # the positive alone: the negative is the sampler's other input
        if clip.clip_skip is not None:
            if "clip_skip" not in accepted:
                raise ValueError(f"CLIPSetLastLayer: the {clip.family} text encoder step takes no clip_skip")
            kwargs["clip_skip"] = clip.clip_skip
        text_models = [n for n in components if n.startswith("text_encoder")]
        with active_loras(clip.pipe, clip.loras, text_models):
            state = ctx.run_blocks(blocks, components, **kwargs)
        outputs = [o.name for o in pipe.blocks.intermediate_outputs]
        embeds = {name: state.get(name) for name in outputs
                  if not name.startswith("negative_") and state.get(name) is not None}
        return (Conditioning(clip.family, embeds),)


class EmptyLatentImage(Node):
    CATEGORY = "latent"
    DISPLAY_NAME = "Empty Latent Image"
    DESCRIPTION = ("An empty batch of latents to denoise, of the given image size; the sampler draws noise of the "
                   "loaded model's own latent shape.")
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"width": int_spec(512, min=16, max=MAX_RESOLUTION, step=8),
                             "height": int_spec(512, min=16, max=MAX_RESOLUTION, step=8),
                             "batch_size": int_spec(1, min=1, max=4096)}}

    def run(self, ctx, width, height, batch_size):
        samples = torch.zeros(batch_size, 4, height // 8, width // 8)
        return ({"samples": samples, "pixel_size": (height, width), "empty": True},)


class FluxGuidance(Node):
    CATEGORY = "advanced/conditioning/flux"
    DESCRIPTION = "Sets Flux's distilled guidance (the transformer's guidance embedding) on a conditioning."
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"conditioning": socket("CONDITIONING"),
                             "guidance": float_spec(3.5, min=0.0, max=100.0, step=0.1)}}

    def run(self, ctx, conditioning, guidance):
        return (replace(conditioning, guidance=float(guidance)),)


def _sampler_problems(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    if "sampler_name" in inputs and "scheduler" in inputs:
        problem = check_sampler(inputs["sampler_name"], inputs["scheduler"])
        if problem is not None:
            return [("scheduler", problem)]
    return []


def _pixel_size(model: ModelHandle, latent: dict[str, Any]) -> tuple[int, int]:
    if latent.get("pixel_size") is not None:
        return tuple(latent["pixel_size"])
    samples = latent["samples"]
    vae = getattr(model.pipe, "vae", None)
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    return samples.shape[-2] * factor, samples.shape[-1] * factor


def sample(ctx: Any, model: ModelHandle, positive: Conditioning, negative: Conditioning | None,
           latent: dict[str, Any], *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
           denoise: float = 1.0, denoising_start: float | None = None,
           denoising_end: float | None = None) -> dict[str, Any]:
    """Denoise `latent` with the family's blocks; returns the LATENT dict of the result."""
    family = model.family
    for cond, label in ((positive, "positive"), (negative, "negative")):
        if cond is not None and cond.family != family:
            raise ValueError(f"the {label} conditioning was encoded by a {cond.family} text encoder but the model is "
                             f"{family}; use the CLIP output of the same checkpoint")
    if latent.get("family") not in (None, family):
        raise ValueError(f"latent_image holds {latent['family']} latents but the model is {family}")
    module = family_module(family)
    height, width = _pixel_size(model, latent)
    inpaint = latent.get("noise_mask") is not None
    if inpaint and latent.get("inpaint_pixels") is None:
        raise ValueError("a latent with a noise mask but without its image is not supported; encode the image with "
                         "VAEEncodeForInpaint")
    text2img = bool(latent.get("empty")) and denoise >= 1.0 and denoising_start is None and not inpaint
    if positive.controls:
        if not text2img or family == "flux":
            raise ValueError("ControlNet conditioning is supported for text-to-image sampling (empty latent, "
                             "denoise 1.0) of SD 1.x/2.x and SDXL models")
        blocks = dict(module.CONTROLNET_BLOCKS)
    elif inpaint:
        if denoising_start is not None or denoising_end is not None:
            raise ValueError("inpainting latents take the whole schedule: use KSampler, or start_at_step 0 and "
                             "end_at_step >= steps")
        blocks = dict(module.INPAINT_BLOCKS)  # its VAE-encoder stage prepares the image and the mask
    else:
        blocks = dict(module.TEXT2IMAGE_BLOCKS if text2img else module.IMAGE2IMAGE_BLOCKS)
    # the decode stage stays, with output_type="latent": it returns the latents undecoded, and it declares the VAE
    # the other stages read (when present) for the latent size factor, as in the full preset
    for stage in ("text_encoder",) if inpaint else ("text_encoder", "vae_encoder"):
        blocks.pop(stage, None)
    accepted = ctx.block_inputs(blocks)
    kwargs: dict[str, Any] = dict(positive.embeds)
    if negative is not None:
        kwargs.update({f"negative_{name}": value for name, value in negative.embeds.items()})
    prompts = next(iter(positive.embeds.values())).shape[0]
    batch = latent["samples"].shape[0]
    if batch % prompts:
        raise ValueError(f"the latent batch ({batch}) must be a multiple of the prompt batch ({prompts})")
    kwargs.update(num_inference_steps=steps, num_images_per_prompt=batch // prompts,
                  generator=torch.Generator().manual_seed(seed), output_type="latent")
    if family == "flux":
        kwargs["guidance_scale"] = positive.guidance if positive.guidance is not None else 3.5
        kwargs["true_cfg_scale"] = cfg
    else:
        kwargs["guidance_scale"] = cfg
    if "height" in accepted:
        kwargs.update(height=height, width=width)
    if inpaint:
        kwargs.update(image=image_to_nchw(latent["inpaint_pixels"]), mask_image=latent["noise_mask"][:, None],
                      strength=denoise)
    elif not text2img:
        image_latents = latent["samples"]
        if latent.get("empty"):
            if family == "flux":
                raise ValueError("denoise < 1 on an empty latent is not supported for Flux; use denoise 1.0")
            vae = getattr(model.pipe, "vae", None)
            channels = vae.config.latent_channels if vae is not None else model.denoiser.config.in_channels
            factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
            image_latents = torch.zeros(batch, channels, height // factor, width // factor)
        kwargs["image_latents"] = image_latents
        if denoising_start is not None:
            kwargs["denoising_start"] = denoising_start
        else:
            kwargs["strength"] = denoise
    if denoising_end is not None:
        if "denoising_end" not in accepted:
            raise ValueError(f"end_at_step before the last step is not supported for {family} models")
        kwargs["denoising_end"] = denoising_end
    if positive.controls:
        hints = positive.controls
        multi = len(hints) > 1
        nets = [h.controlnet for h in hints]
        images = [h.image.permute(0, 3, 1, 2) for h in hints]
        kwargs.update(control_image=images if multi else images[0],
                      controlnet_conditioning_scale=[h.strength for h in hints] if multi else hints[0].strength,
                      control_guidance_start=[h.start_percent for h in hints] if multi else hints[0].start_percent,
                      control_guidance_end=[h.end_percent for h in hints] if multi else hints[0].end_percent)
    components: dict[str, Any] = {model.denoiser_name: model.denoiser,
                                  "scheduler": make_scheduler(sampler_name, scheduler, model.pipe.scheduler),
                                  "vae": latent["inpaint_vae"] if inpaint else getattr(model.pipe, "vae", None)}
    if positive.controls:
        components["controlnet"] = nets if multi else nets[0]
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"the {family} sampler blocks take no {unknown}")
    with active_loras(model.pipe, model.loras, [model.denoiser_name]):
        latents = ctx.run_blocks(blocks, components, output="latents", preview=True, preview_size=(height, width),
                                 **kwargs)
    vae = components["vae"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8  # as the blocks derive it
    return {"samples": latents, "pixel_size": (height, width), "family": family, "latent_scale": scale}


class KSampler(Node):
    CATEGORY = "sampling"
    DISPLAY_NAME = "KSampler"
    DESCRIPTION = ("Denoises the latent image with the model, guided by the positive and negative conditioning "
                   "(classifier-free guidance scale cfg). sampler_name/scheduler pick one of our schedulers; see "
                   "docs/server.md for the supported pairs.")
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {
            "model": socket("MODEL", tooltip="The model used for denoising the input latent."),
            "seed": int_spec(0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
            "steps": int_spec(20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
            "cfg": float_spec(8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                              tooltip="The Classifier-Free Guidance scale."),
            "sampler_name": combo(SAMPLER_NAMES, tooltip="The algorithm used when sampling."),
            "scheduler": combo(SCHEDULER_NAMES, tooltip="The scheduler controls how noise is removed."),
            "positive": socket("CONDITIONING"),
            "negative": socket("CONDITIONING"),
            "latent_image": socket("LATENT", tooltip="The latent image to denoise."),
            "denoise": float_spec(1.0, min=0.0, max=1.0, step=0.01,
                                  tooltip="The amount of denoising applied (lower keeps more of the input)."),
        }}

    @classmethod
    def check(cls, inputs, paths):
        return _sampler_problems(inputs)

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        if denoise <= 0.0:
            return (latent_image,)
        return (sample(ctx, model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, denoise=denoise),)


class KSamplerAdvanced(Node):
    CATEGORY = "sampling"
    DISPLAY_NAME = "KSampler (Advanced)"
    DESCRIPTION = ("KSampler over a part of the schedule: start_at_step / end_at_step of `steps`. Starting later "
                   "without added noise continues a partly denoised latent (the SDXL refiner pattern); ending early "
                   "returns the latent with its leftover noise.")
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {
            "model": socket("MODEL"),
            "add_noise": combo(["enable", "disable"]),
            "noise_seed": int_spec(0, min=0, max=MAX_SEED, control_after_generate=True),
            "steps": int_spec(20, min=1, max=10000),
            "cfg": float_spec(8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            "sampler_name": combo(SAMPLER_NAMES),
            "scheduler": combo(SCHEDULER_NAMES),
            "positive": socket("CONDITIONING"),
            "negative": socket("CONDITIONING"),
            "latent_image": socket("LATENT"),
            "start_at_step": int_spec(0, min=0, max=10000),
            "end_at_step": int_spec(10000, min=0, max=10000),
            "return_with_leftover_noise": combo(["disable", "enable"]),
        }}

    @classmethod
    def check(cls, inputs, paths):
        problems = _sampler_problems(inputs)
        start, end, steps = inputs.get("start_at_step"), inputs.get("end_at_step"), inputs.get("steps")
        if None not in (start, end, steps):
            if start >= min(end, steps):
                problems.append(("start_at_step", f"start_at_step ({start}) must be below end_at_step ({end}) "
                                                  f"and steps ({steps})"))
            elif start == 0 and inputs.get("add_noise") == "disable":
                problems.append(("add_noise", "add_noise 'disable' needs start_at_step > 0 (a partly denoised "
                                              "latent to continue); from step 0 use 'enable'"))
            elif end < steps and inputs.get("return_with_leftover_noise") == "disable":
                problems.append(("return_with_leftover_noise", "ending before the last step returns the latent "
                                 "with its leftover noise here; set return_with_leftover_noise to 'enable'"))
        return problems

    def run(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        end = min(end_at_step, steps)
        denoise, start_frac = 1.0, None
        if start_at_step > 0:
            if add_noise == "enable":
                denoise = 1.0 - start_at_step / steps  # noise the latent to the start step (img2img strength)
            else:
                start_frac = start_at_step / steps  # continue without adding noise
        return (sample(ctx, model, positive, negative, latent_image, seed=noise_seed, steps=steps, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                       denoising_start=start_frac, denoising_end=end / steps if end < steps else None),)
