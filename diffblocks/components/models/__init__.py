"""Our PyTorch implementations of the diffusion models, in the standard checkpoint layout."""

from .autoencoder_kl import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from .controlnet import ControlNetModel, ControlNetOutput
from .flux_transformer import FluxTransformer2DModel, Transformer2DModelOutput
from .unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

__all__ = [
    "AutoencoderKL", "FluxTransformer2DModel", "Transformer2DModelOutput", "AutoencoderKLOutput", "ControlNetModel", "ControlNetOutput", "DecoderOutput",
    "DiagonalGaussianDistribution", "UNet2DConditionModel", "UNet2DConditionOutput",
]
