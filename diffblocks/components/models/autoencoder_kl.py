"""The KL autoencoder (SD 1.x / 2.x / SDXL VAE, and the Flux VAE without quant convs)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import register_to_config
from ..modeling import BaseOutput, ModelMixin
from .embeddings import get_activation
from .unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D

__all__ = ["AutoencoderKL", "AutoencoderKLOutput", "Decoder", "DecoderOutput", "DiagonalGaussianDistribution",
           "Encoder", "randn_tensor"]


class AutoencoderKLOutput(BaseOutput):
    """`latent_dist`: the posterior over latents."""


class DecoderOutput(BaseOutput):
    """`sample`: the decoded images in [-1, 1] (roughly)."""


def randn_tensor(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so CPU seeds reproduce on any device), then moved.

    A list of generators draws one batch entry from each.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]}.")
        parts = [randn_tensor((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(parts, dim=0)
    rand_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


class DiagonalGaussianDistribution:
    """Posterior N(mean, exp(logvar)) from the encoder's moments (mean and logvar stacked on channels)."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        noise = randn_tensor(tuple(self.mean.shape), generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum((self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0
                               - self.logvar + other.logvar, dim=[1, 2, 3])


def _check_types(types: tuple[str, ...], allowed: str, role: str) -> None:
    bad = [t for t in types if t != allowed]
    if bad:
        raise ValueError(f"Unsupported {role} block types {bad}; AutoencoderKL supports {allowed!r} only.")


class Encoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, down_block_types: tuple[str, ...],
                 block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int, act_fn: str,
                 double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        _check_types(tuple(down_block_types), "DownEncoderBlock2D", "down")
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i in range(len(down_block_types)):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(DownEncoderBlock2D(
                input_channel, output_channel, num_layers=layers_per_block, resnet_eps=1e-6, resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups, add_downsample=i < len(block_out_channels) - 1,
                downsample_padding=0))
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], temb_channels=None, resnet_eps=1e-6,
                                        resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                        add_attention=mid_block_add_attention,
                                        attention_head_dim=block_out_channels[-1])
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels,
                                  kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in [*self.down_blocks, self.mid_block]:
            sample = checkpoint(block, sample, use_reentrant=False) if ckpt else block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, up_block_types: tuple[str, ...],
                 block_out_channels: tuple[int, ...], layers_per_block: int, norm_num_groups: int, act_fn: str,
                 mid_block_add_attention: bool = True):
        super().__init__()
        _check_types(tuple(up_block_types), "UpDecoderBlock2D", "up")
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, padding=1)
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], temb_channels=None, resnet_eps=1e-6,
                                        resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                                        add_attention=mid_block_add_attention,
                                        attention_head_dim=block_out_channels[-1])
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(up_block_types)):
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(UpDecoderBlock2D(
                prev_output_channel, output_channel, num_layers=layers_per_block + 1, resnet_eps=1e-6,
                resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                add_upsample=i < len(block_out_channels) - 1))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in [self.mid_block, *self.up_blocks]:
            sample = checkpoint(block, sample, use_reentrant=False) if ckpt else block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


def _blend_v(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the top `extent` rows of `b` from the bottom rows of `a` (in place on `b`)."""
    extent = min(a.shape[2], b.shape[2], extent)
    if extent > 0:
        w = torch.arange(extent, dtype=torch.float64, device=b.device) / extent
        keep, take = (1 - w).to(b.dtype).view(1, 1, extent, 1), w.to(b.dtype).view(1, 1, extent, 1)
        b[:, :, :extent, :] = a[:, :, -extent:, :] * keep + b[:, :, :extent, :] * take
    return b


def _blend_h(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the left `extent` columns of `b` from the right columns of `a` (in place on `b`)."""
    extent = min(a.shape[3], b.shape[3], extent)
    if extent > 0:
        w = torch.arange(extent, dtype=torch.float64, device=b.device) / extent
        keep, take = (1 - w).to(b.dtype).view(1, 1, 1, extent), w.to(b.dtype).view(1, 1, 1, extent)
        b[:, :, :, :extent] = a[:, :, :, -extent:] * keep + b[:, :, :, :extent] * take
    return b


def _stitch(rows: list[list[torch.Tensor]], blend_extent: int, row_limit: int) -> torch.Tensor:
    out_rows = []
    for i, row in enumerate(rows):
        out_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend_v(rows[i - 1][j], tile, blend_extent)
            if j > 0:
                tile = _blend_h(row[j - 1], tile, blend_extent)
            out_row.append(tile[:, :, :row_limit, :row_limit])
        out_rows.append(torch.cat(out_row, dim=3))
    return torch.cat(out_rows, dim=2)


class AutoencoderKL(ModelMixin):
    """VAE with a diagonal-Gaussian latent: `encode(x).latent_dist`, `decode(z).sample`.

    `scaling_factor` / `shift_factor` are applied by pipelines (z = (latent - shift) * scale); `force_upcast` tells
    them to run this VAE in float32. Slicing (one image at a time) and tiling (overlapping tiles, blended seams)
    bound memory for large batches and images.
    """

    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.encoder = Encoder(in_channels, latent_channels, tuple(down_block_types), tuple(block_out_channels),
                               layers_per_block, norm_num_groups, act_fn, double_z=True,
                               mid_block_add_attention=mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, tuple(up_block_types), tuple(block_out_channels),
                               layers_per_block, norm_num_groups, act_fn,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / (2 ** (len(block_out_channels) - 1)))
        self.tile_overlap_factor = 0.25

    # -- memory switches ---------------------------------------------------------------------------
    def enable_tiling(self, use_tiling: bool = True) -> None:
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    # -- encode ------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (x.shape[-1] > self.tile_sample_min_size or x.shape[-2] > self.tile_sample_min_size):
            return self._tiled_encode(x)
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images (B, C, H, W) in [-1, 1] -> posterior over latents (B, latent_channels, H/f, W/f)."""
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        overlap = int(self.tile_sample_min_size * (1 - self.tile_overlap_factor))
        blend_extent = int(self.tile_latent_min_size * self.tile_overlap_factor)
        row_limit = self.tile_latent_min_size - blend_extent
        size = self.tile_sample_min_size
        rows = []
        for i in range(0, x.shape[2], overlap):
            row = []
            for j in range(0, x.shape[3], overlap):
                tile = self.encoder(x[:, :, i:i + size, j:j + size])
                row.append(self.quant_conv(tile) if self.quant_conv is not None else tile)
            rows.append(row)
        return _stitch(rows, blend_extent, row_limit)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        posterior = DiagonalGaussianDistribution(self._tiled_encode(x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # -- decode ------------------------------------------------------------------------------------
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and (z.shape[-1] > self.tile_latent_min_size or z.shape[-2] > self.tile_latent_min_size):
            return self.tiled_decode(z).sample
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def decode(self, z: torch.Tensor, return_dict: bool = True,
               generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Latents (unscaled: divide by scaling_factor first) -> images."""
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        overlap = int(self.tile_latent_min_size * (1 - self.tile_overlap_factor))
        blend_extent = int(self.tile_sample_min_size * self.tile_overlap_factor)
        row_limit = self.tile_sample_min_size - blend_extent
        size = self.tile_latent_min_size
        rows = []
        for i in range(0, z.shape[2], overlap):
            row = []
            for j in range(0, z.shape[3], overlap):
                tile = z[:, :, i:i + size, j:j + size]
                if self.post_quant_conv is not None:
                    tile = self.post_quant_conv(tile)
                row.append(self.decoder(tile))
            rows.append(row)
        dec = _stitch(rows, blend_extent, row_limit)
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        dec = self.decode(z).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)
