"""One training step as a block graph.

The step reuses the inference blocks where they exist (the SD text encoder step turns captions into
`prompt_embeds`, the VAE encoder step turns images into scaled `image_latents`) and adds the training
blocks below: noise + timesteps, forward diffusion, model prediction, target, loss and the optimizer step.
Swap any of them by name (`blocks.sub_blocks["loss"] = MyLoss()`), insert new ones (augmentation before
"vae_encoder"), or build your own dict from these classes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..blocks import (
    BlockInputError,
    InputParam,
    InsertableDict,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)
from ..components.models import UNet2DConditionModel
from ..components.schedulers import DDPMScheduler
from ..components.spec import ComponentSpec
from ..presets.common import VaeEncoderStep
from ..presets.sd import StableDiffusionTextEncoderStep
from .losses import (
    PREDICTION_TYPES,
    diffusion_loss,
    min_snr_weights,
    prior_preservation_loss,
    training_target,
)

__all__ = [
    "DREAMBOOTH_TRAIN_BLOCKS",
    "TEXT2IMAGE_TRAIN_BLOCKS",
    "AddNoiseStep",
    "DiffusionLossStep",
    "ModelPredictionStep",
    "OptimizerStep",
    "PriorPreservationLossStep",
    "SampleNoiseStep",
    "TargetStep",
    "TrainingStepBlocks",
    "noise_scheduler_spec",
]


def noise_scheduler_spec() -> ComponentSpec:
    return ComponentSpec("noise_scheduler", DDPMScheduler, description="the training noise schedule (DDPM)")


class SampleNoiseStep(ModularPipelineBlocks):
    """Gaussian noise like the latents (+ offset noise) and one uniform random training timestep per sample."""

    @property
    def description(self) -> str:
        return ("Sample `noise` like `image_latents` (plus `noise_offset` x per-channel noise) and uniform "
                "`timesteps` in [0, num_train_timesteps)")

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [noise_scheduler_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image_latents", type_hint=torch.Tensor, required=True),
                InputParam("noise_offset", type_hint=float, default=0.0,
                           description="scale of per-(sample, channel) constant noise (Guttenberg 2023)"),
                InputParam("generator", description="torch.Generator for the noise and timesteps (None: global)")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("noise", type_hint=torch.Tensor), OutputParam("timesteps", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        latents = bs.image_latents
        gen = bs.generator
        device = latents.device if gen is None else gen.device
        noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
        if bs.noise_offset:
            offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=device,
                                 dtype=latents.dtype)
            noise = noise + bs.noise_offset * offset
        n_train = components.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, n_train, (latents.shape[0],), generator=gen, device=device).long()
        bs.noise, bs.timesteps = noise.to(latents.device), timesteps.to(latents.device)
        self.set_block_state(state, bs)
        return components, state


class AddNoiseStep(ModularPipelineBlocks):
    """The forward diffusion: noisy_latents = sqrt(a_t) x0 + sqrt(1 - a_t) noise."""

    @property
    def description(self) -> str:
        return "Forward diffusion of `image_latents` to `timesteps` with the noise scheduler"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [noise_scheduler_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image_latents", type_hint=torch.Tensor, required=True),
                InputParam("noise", type_hint=torch.Tensor, required=True),
                InputParam("timesteps", type_hint=torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("noisy_latents", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.noisy_latents = components.noise_scheduler.add_noise(bs.image_latents, bs.noise, bs.timesteps)
        self.set_block_state(state, bs)
        return components, state


class ModelPredictionStep(ModularPipelineBlocks):
    """The UNet's prediction for the noisy latents, conditioned on the text embeddings (with gradients)."""

    @property
    def description(self) -> str:
        return "UNet forward on `noisy_latents` at `timesteps` given `prompt_embeds` -> `model_pred`"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [ComponentSpec("unet", UNet2DConditionModel)]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("noisy_latents", type_hint=torch.Tensor, required=True),
                InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("prompt_embeds", type_hint=torch.Tensor, required=True),
                InputParam("added_cond_kwargs", type_hint=dict, description="SDXL text_embeds / time_ids")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("model_pred", type_hint=torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        kwargs: dict[str, Any] = {}
        if bs.added_cond_kwargs is not None:
            kwargs["added_cond_kwargs"] = bs.added_cond_kwargs
        elif components.unet.config.addition_embed_type == "text_time":
            raise BlockInputError("Block 'ModelPredictionStep': the UNet is SDXL-type (addition_embed_type "
                                  "'text_time') and needs input 'added_cond_kwargs' (text_embeds, time_ids); train "
                                  "with the SDXL graph (SDXL_TEXT2IMAGE_TRAIN_BLOCKS), whose 'time_ids' block makes "
                                  "it.", block="ModelPredictionStep", input_name="added_cond_kwargs")
        bs.model_pred = components.unet(bs.noisy_latents, bs.timesteps, bs.prompt_embeds, return_dict=False,
                                        **kwargs)[0]
        self.set_block_state(state, bs)
        return components, state


class TargetStep(ModularPipelineBlocks):
    """The regression target for the scheduler's (or the overridden) prediction type."""

    @property
    def description(self) -> str:
        return "Target for `prediction_type` (default: the noise scheduler's): noise, velocity or the latents"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [noise_scheduler_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("image_latents", type_hint=torch.Tensor, required=True),
                InputParam("noise", type_hint=torch.Tensor, required=True),
                InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("prediction_type", type_hint=str, description="epsilon, v_prediction or sample")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("target", type_hint=torch.Tensor),
                OutputParam("prediction_type", type_hint=str, description="the prediction type used")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        scheduler = components.noise_scheduler
        bs.prediction_type = bs.prediction_type or scheduler.config.prediction_type
        if bs.prediction_type not in PREDICTION_TYPES:
            raise BlockInputError(f"Block 'TargetStep': input 'prediction_type' must be one of "
                                  f"{', '.join(PREDICTION_TYPES)}, got {bs.prediction_type!r}.", block="TargetStep",
                                  input_name="prediction_type")
        bs.target = training_target(scheduler, bs.prediction_type, bs.image_latents, bs.noise, bs.timesteps)
        self.set_block_state(state, bs)
        return components, state


class DiffusionLossStep(ModularPipelineBlocks):
    """MSE between prediction and target, optionally Min-SNR-gamma weighted per sample."""

    @property
    def description(self) -> str:
        return "MSE(`model_pred`, `target`) -> `loss`; with `snr_gamma`, Min-SNR-weighted per sample"

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [noise_scheduler_spec()]

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("model_pred", type_hint=torch.Tensor, required=True),
                InputParam("target", type_hint=torch.Tensor, required=True),
                InputParam("timesteps", type_hint=torch.Tensor, required=True),
                InputParam("prediction_type", type_hint=str, required=True),
                InputParam("snr_gamma", type_hint=float, description="Min-SNR gamma (5.0 recommended); None: off")]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("loss", type_hint=torch.Tensor, description="scalar training loss")]

    def weights(self, components, timesteps: torch.Tensor, snr_gamma: float | None, prediction_type: str):
        if snr_gamma is None:
            return None
        return min_snr_weights(components.noise_scheduler, timesteps, snr_gamma, prediction_type)

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.loss = diffusion_loss(bs.model_pred, bs.target,
                                 self.weights(components, bs.timesteps, bs.snr_gamma, bs.prediction_type))
        self.set_block_state(state, bs)
        return components, state


class PriorPreservationLossStep(DiffusionLossStep):
    """DreamBooth: the batch is instance examples then class examples; loss = instance loss + w * prior loss."""

    @property
    def description(self) -> str:
        return ("DreamBooth loss: the first `num_instance` samples give the (Min-SNR-weighted) instance MSE, the "
                "rest the class-prior MSE weighted by `prior_loss_weight`")

    @property
    def inputs(self) -> list[InputParam]:
        return [*super().inputs,
                InputParam("num_instance", type_hint=int, description="instance samples at the front of the batch "
                           "(None: the whole batch, no prior term)"),
                InputParam("prior_loss_weight", type_hint=float, default=1.0)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [*super().intermediate_outputs,
                OutputParam("prior_loss", type_hint=torch.Tensor, description="class-prior MSE (None without)")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        n = bs.num_instance if bs.num_instance is not None else bs.model_pred.shape[0]
        if not 0 < n <= bs.model_pred.shape[0]:
            raise BlockInputError(f"Block 'PriorPreservationLossStep': input 'num_instance'={n} must be in "
                                  f"[1, batch={bs.model_pred.shape[0]}].", block="PriorPreservationLossStep",
                                  input_name="num_instance")
        weights = self.weights(components, bs.timesteps[:n], bs.snr_gamma, bs.prediction_type)
        bs.loss = diffusion_loss(bs.model_pred[:n], bs.target[:n], weights)
        bs.prior_loss = None
        if n < bs.model_pred.shape[0]:
            bs.prior_loss = prior_preservation_loss(bs.model_pred[n:], bs.target[n:])
            bs.loss = bs.loss + bs.prior_loss_weight * bs.prior_loss
        self.set_block_state(state, bs)
        return components, state


class OptimizerStep(ModularPipelineBlocks):
    """Backward through accelerate; on a synchronising micro-batch clip, step the optimizer and the LR schedule."""

    @property
    def description(self) -> str:
        return ("accelerator.backward(`loss`); when gradients sync: clip to `max_grad_norm`, optimizer.step, "
                "lr_scheduler.step, zero_grad")

    @property
    def inputs(self) -> list[InputParam]:
        return [InputParam("loss", type_hint=torch.Tensor, required=True),
                InputParam("accelerator", required=True, description="accelerate.Accelerator"),
                InputParam("optimizer", required=True), InputParam("lr_scheduler"),
                InputParam("params_to_clip", type_hint=list, description="parameters whose grad norm is clipped"),
                InputParam("max_grad_norm", type_hint=float, default=1.0)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [OutputParam("optimizer_stepped", type_hint=bool,
                            description="whether this micro-batch ended an accumulation cycle")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        acc = bs.accelerator
        acc.backward(bs.loss)
        if acc.sync_gradients and bs.params_to_clip and bs.max_grad_norm:
            acc.clip_grad_norm_(bs.params_to_clip, bs.max_grad_norm)
        bs.optimizer.step()
        if bs.lr_scheduler is not None:
            bs.lr_scheduler.step()
        bs.optimizer.zero_grad(set_to_none=True)
        bs.optimizer_stepped = bool(acc.sync_gradients)
        self.set_block_state(state, bs)
        return components, state


TEXT2IMAGE_TRAIN_BLOCKS = InsertableDict([
    ("text_encoder", StableDiffusionTextEncoderStep),
    ("vae_encoder", VaeEncoderStep),
    ("sample_noise", SampleNoiseStep),
    ("add_noise", AddNoiseStep),
    ("predict", ModelPredictionStep),
    ("target", TargetStep),
    ("loss", DiffusionLossStep),
    ("optimize", OptimizerStep),
])

DREAMBOOTH_TRAIN_BLOCKS = InsertableDict([*TEXT2IMAGE_TRAIN_BLOCKS.items()])
DREAMBOOTH_TRAIN_BLOCKS["loss"] = PriorPreservationLossStep


class TrainingStepBlocks(SequentialPipelineBlocks):
    """One SD 1.x/2.x text-to-image training step: captions + images in, loss out, weights updated."""

    model_name = "stable-diffusion"
    block_classes = list(TEXT2IMAGE_TRAIN_BLOCKS.values())
    block_names = list(TEXT2IMAGE_TRAIN_BLOCKS.keys())

    @property
    def description(self) -> str:
        return ("Training step: encode captions and images with the inference blocks, noise the latents, "
                "predict, regress onto the target, and step the optimizer through accelerate")
