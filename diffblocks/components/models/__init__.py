"""Our PyTorch implementations of the diffusion models, in the standard checkpoint layout."""

from .autoencoder_kl import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from .controlnet import ControlNetModel, ControlNetOutput
from .unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

__all__ = [
    "AutoencoderKL", "AutoencoderKLOutput", "ControlNetModel", "ControlNetOutput", "DecoderOutput",
    "DiagonalGaussianDistribution", "UNet2DConditionModel", "UNet2DConditionOutput",
]
