"""A tiny, model-free diffusion workflow: 2-D points denoised towards a Gaussian with a known score.

It exercises every kind of block (sequential, auto, loop) with real numbers, so `diffblocks demo`
and `diffblocks inspect toy` work without downloading anything.
"""

from __future__ import annotations

import torch

from ..blocks import (
    AutoPipelineBlocks,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)

__all__ = ["ToyDiffusionBlocks"]


class ToyNoiseStep(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Draws the starting points from a standard normal, scaled to the first noise level."

    @property
    def inputs(self):
        return [
            InputParam("num_points", int, default=256, description="How many 2-D points to sample."),
            InputParam("seed", int, default=0, description="Seed of the starting noise."),
            InputParam("sigma_max", float, default=80.0, description="Noise level the sampler starts from."),
        ]

    @property
    def intermediate_outputs(self):
        return [OutputParam("points", torch.Tensor, "Current samples, shape (num_points, 2).")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        generator = torch.Generator().manual_seed(bs.seed)
        bs.points = torch.randn(bs.num_points, 2, generator=generator, dtype=torch.float64) * bs.sigma_max
        self.set_block_state(state, bs)
        return components, state


class ToyStartFromPoints(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Starts from user-given points plus noise at the first noise level (the 'image-to-image' of the toy)."

    @property
    def inputs(self):
        return [
            InputParam("init_points", torch.Tensor, required=True, description="Points to start from."),
            InputParam("seed", int, default=0),
            InputParam("sigma_max", float, default=80.0),
        ]

    @property
    def intermediate_outputs(self):
        return [OutputParam("points", torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        generator = torch.Generator().manual_seed(bs.seed)
        init = bs.init_points.to(torch.float64)
        bs.points = init + torch.randn(init.shape, generator=generator, dtype=torch.float64) * bs.sigma_max
        self.set_block_state(state, bs)
        return components, state


class ToyPrepare(AutoPipelineBlocks):
    block_classes = [ToyStartFromPoints, ToyNoiseStep]
    block_names = ["from_points", "from_noise"]
    block_trigger_inputs = ["init_points", None]

    @property
    def description(self) -> str:
        return "Starting points: from `init_points` when given, else from pure noise."


class ToyScoreStep(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Exact denoiser of N(target_mean, I) convolved with noise of level sigma."

    @property
    def inputs(self):
        return [
            InputParam("target_mean", torch.Tensor, description="Mean of the target Gaussian."),
            InputParam("points", torch.Tensor, required=True),
        ]

    @property
    def intermediate_outputs(self):
        return [OutputParam("denoised", torch.Tensor)]

    def __call__(self, components, block_state, i: int, sigma: float):
        # E[x0 | x_sigma] for x0 ~ N(m, I): m + (x - m) / (1 + sigma^2)
        mean = block_state.target_mean
        block_state.denoised = mean + (block_state.points - mean) / (1.0 + sigma * sigma)
        return components, block_state


class ToyEulerStep(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "One Euler step of the probability-flow ODE from sigma to the next sigma."

    @property
    def inputs(self):
        return [
            InputParam("points", torch.Tensor, required=True),
            InputParam("denoised", torch.Tensor, required=True),
            InputParam("sigmas", list, required=True),
        ]

    @property
    def intermediate_outputs(self):
        return [OutputParam("points", torch.Tensor)]

    def __call__(self, components, block_state, i: int, sigma: float):
        next_sigma = block_state.sigmas[i + 1]
        derivative = (block_state.points - block_state.denoised) / sigma
        block_state.points = block_state.points + derivative * (next_sigma - sigma)
        return components, block_state


class ToyDenoiseLoop(LoopSequentialPipelineBlocks):
    block_classes = [ToyScoreStep, ToyEulerStep]
    block_names = ["denoiser", "after_denoiser"]

    @property
    def description(self) -> str:
        return "Runs the denoiser and the Euler update for each noise level (geometric schedule)."

    @property
    def loop_inputs(self):
        return [
            InputParam("num_inference_steps", int, default=40),
            InputParam("sigma_max", float, default=80.0),
            InputParam("target_mean", torch.Tensor, default=None),
        ]

    @property
    def loop_intermediate_outputs(self):
        return [OutputParam("sigmas", list, "The noise levels visited, ending at 0.")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        if bs.target_mean is None:
            bs.target_mean = torch.tensor([2.0, -1.0], dtype=torch.float64)
        steps = bs.num_inference_steps
        ratio = (0.01 / bs.sigma_max) ** (1.0 / max(steps - 1, 1))
        bs.sigmas = [bs.sigma_max * ratio**k for k in range(steps)] + [0.0]
        for i in self.progress_bar(range(steps)):
            components, bs = self.loop_step(components, bs, i=i, sigma=bs.sigmas[i])
        self.set_block_state(state, bs)
        return components, state


class ToySummary(ModularPipelineBlocks):
    @property
    def description(self) -> str:
        return "Sample mean and covariance of the final points (should approach the target Gaussian)."

    @property
    def inputs(self):
        return [InputParam("points", torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("mean", torch.Tensor), OutputParam("covariance", torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.mean = bs.points.mean(0)
        bs.covariance = torch.cov(bs.points.T)
        self.set_block_state(state, bs)
        return components, state


class ToyDiffusionBlocks(SequentialPipelineBlocks):
    block_classes = [ToyPrepare, ToyDenoiseLoop, ToySummary]
    block_names = ["prepare", "denoise", "summary"]

    @property
    def description(self) -> str:
        return "Model-free toy diffusion of 2-D points towards N(target_mean, I)."
