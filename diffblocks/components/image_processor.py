"""Images in and out of the VAE: PIL / numpy / tensor -> normalised NCHW tensors, and back.

Conventions (shared with the standard diffusers processor so pipelines give the same pixels):
* numpy images are ``(H, W, C)`` / ``(N, H, W, C)`` floats in ``[0, 1]``; tensors are ``(C, H, W)`` /
  ``(N, C, H, W)`` floats in ``[0, 1]`` (``[-1, 1]`` is accepted and left un-normalised, with a warning).
* ``preprocess`` returns ``(N, C, H, W)`` float32 with ``H, W`` multiples of ``vae_scale_factor``;
  a tensor with ``vae_latent_channels`` channels is taken to be latents and returned unchanged.
* ``postprocess`` turns a decoded ``(N, C, H, W)`` tensor into ``pil`` / ``np`` / ``pt`` / ``latent``.
"""

from __future__ import annotations

import logging
from typing import Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from PIL import ImageFilter, ImageOps

from .config import ConfigMixin, register_to_config

logger = logging.getLogger(__name__)

__all__ = ["PipelineImageInput", "VaeImageProcessor"]

PipelineImageInput = Union[
    PIL.Image.Image, np.ndarray, torch.Tensor, list[PIL.Image.Image], list[np.ndarray], list[torch.Tensor]
]

_RESAMPLE = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}
_RESIZE_MODES = ("default", "fill", "crop")
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _describe(image: object) -> str:
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__name__} of shape {tuple(image.shape)}"
    if isinstance(image, PIL.Image.Image):
        return f"PIL image {image.size[0]}x{image.size[1]} mode {image.mode}"
    return type(image).__name__


class VaeImageProcessor(ConfigMixin):
    """Pre- and post-processing of images (and masks) for a VAE.

    A mask processor is the same class with ``do_normalize=False, do_binarize=True,
    do_convert_grayscale=True``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ) -> None:
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError(
                "VaeImageProcessor: do_convert_rgb and do_convert_grayscale cannot both be True; "
                "set do_convert_grayscale=False for RGB output or do_convert_rgb=False for grayscale masks."
            )
        if resample not in _RESAMPLE:
            raise ValueError(f"VaeImageProcessor: resample={resample!r} is not one of {sorted(_RESAMPLE)}.")
        if int(vae_scale_factor) < 1:
            raise ValueError(f"VaeImageProcessor: vae_scale_factor must be >= 1, got {vae_scale_factor}.")

    # -- conversions ----------------------------------------------------------------------------
    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """``(N, H, W, C)`` or ``(H, W, C)`` floats in [0, 1] -> PIL images (1 channel -> mode "L")."""
        if images.ndim == 3:
            images = images[None, ...]
        images = (images * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [PIL.Image.fromarray(image.squeeze(), mode="L") for image in images]
        return [PIL.Image.fromarray(image) for image in images]

    @staticmethod
    def pil_to_numpy(images: list[PIL.Image.Image] | PIL.Image.Image) -> np.ndarray:
        if not isinstance(images, list):
            images = [images]
        return np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)

    @staticmethod
    def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
        """``(N, H, W, C)`` -> ``(N, C, H, W)``; a ``(N, H, W)`` batch gets one channel."""
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(images.transpose(0, 3, 1, 2))

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        return images.cpu().permute(0, 2, 3, 1).float().numpy()

    @staticmethod
    def normalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """[0, 1] -> [-1, 1]."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """[-1, 1] -> [0, 1], clamped."""
        if isinstance(images, np.ndarray):
            return np.clip(images * 0.5 + 0.5, 0, 1)
        return (images * 0.5 + 0.5).clamp(0, 1)

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    @staticmethod
    def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
        """Gaussian blur, used to soften inpainting masks."""
        return image.filter(ImageFilter.GaussianBlur(blur_factor))

    # -- geometry -------------------------------------------------------------------------------
    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
        """Box ``(x1, y1, x2, y2)`` around the non-zero mask, padded by ``pad`` and grown to the
        aspect ratio ``width / height`` (for inpainting with ``padding_mask_crop``)."""
        mask = np.array(mask_image.convert("L"))
        h, w = mask.shape
        cols = np.flatnonzero((mask != 0).any(axis=0))
        rows = np.flatnonzero((mask != 0).any(axis=1))
        if cols.size == 0:
            # an empty mask: the reference's scan runs off both ends, giving an inverted box
            left, right, top, bottom = w, w, h, h
        else:
            left, right = int(cols[0]), int(w - 1 - cols[-1])
            top, bottom = int(rows[0]), int(h - 1 - rows[-1])

        x1, y1 = max(left - pad, 0), max(top - pad, 0)
        x2, y2 = min(w - right + pad, w), min(h - bottom + pad, h)
        if x2 <= x1 or y2 <= y1:
            raise ValueError(
                f"get_crop_region: the mask ({w}x{h}) has no non-zero pixels; nothing to crop around. "
                "Pass a mask with a white (non-zero) region or leave padding_mask_crop=None."
            )

        ratio_crop = (x2 - x1) / (y2 - y1)
        ratio_target = width / height
        if ratio_crop > ratio_target:
            diff = int((x2 - x1) / ratio_target - (y2 - y1))
            y1 -= diff // 2
            y2 += diff - diff // 2
            if y2 >= h:
                y1 -= y2 - h
                y2 = h
            if y1 < 0:
                y2 -= y1
                y1 = 0
            y2 = min(y2, h)
        else:
            diff = int((y2 - y1) * ratio_target - (x2 - x1))
            x1 -= diff // 2
            x2 += diff - diff // 2
            if x2 >= w:
                x1 -= x2 - w
                x2 = w
            if x1 < 0:
                x2 -= x1
                x1 = 0
            x2 = min(x2, w)
        return x1, y1, x2, y2

    def _pil_resize(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        return image.resize((width, height), resample=_RESAMPLE[self.config.resample],
                            reducing_gap=self.config.reducing_gap)

    def _resize_and_fill(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Fit inside (width, height) keeping the aspect ratio; fill the borders by stretching the edges."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), resample=_RESAMPLE[self.config.resample])
        out = PIL.Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        # the edge strips use PIL's default filter, as the standard pipelines do
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, fill),
                                         box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((fill, height),
                                         box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
        return out

    def _resize_and_crop(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """Cover (width, height) keeping the aspect ratio; crop the excess around the centre."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), resample=_RESAMPLE[self.config.resample])
        out = PIL.Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out

    def resize(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        height: int,
        width: int,
        resize_mode: str = "default",
    ) -> PIL.Image.Image | np.ndarray | torch.Tensor:
        """Resize to (height, width). ``fill`` / ``crop`` keep the aspect ratio and need a PIL image;
        arrays and tensors (batched, NCHW / NHWC) use nearest interpolation."""
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize: resize_mode={resize_mode!r} is not one of {_RESIZE_MODES}.")
        if resize_mode != "default" and not isinstance(image, PIL.Image.Image):
            raise ValueError(
                f"resize: resize_mode={resize_mode!r} needs a PIL image, got {_describe(image)}; "
                "use resize_mode='default' for arrays and tensors."
            )
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "fill":
                return self._resize_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._resize_and_crop(image, width, height)
            return self._pil_resize(image, width, height)
        if isinstance(image, torch.Tensor):
            return F.interpolate(image, size=(height, width))
        if isinstance(image, np.ndarray):
            return self.pt_to_numpy(F.interpolate(self.numpy_to_pt(image), size=(height, width)))
        raise TypeError(f"resize: expected a PIL image, numpy array or torch tensor, got {_describe(image)}.")

    def binarize(self, image: torch.Tensor) -> torch.Tensor:
        """Masks: values < 0.5 become 0, the rest 1 (in place)."""
        image[image < 0.5] = 0
        image[image >= 0.5] = 1
        return image

    def get_default_height_width(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor,
        height: int | None = None,
        width: int | None = None,
    ) -> tuple[int, int]:
        """(height, width) of the image (or the given ones), rounded down to a multiple of
        ``vae_scale_factor``. Arrays are ``(N, H, W[, C])``, tensors ``(N, C, H, W)``."""
        if height is None:
            if isinstance(image, PIL.Image.Image):
                height = image.height
            elif isinstance(image, torch.Tensor):
                height = image.shape[2]
            else:
                height = image.shape[1]
        if width is None:
            if isinstance(image, PIL.Image.Image):
                width = image.width
            elif isinstance(image, torch.Tensor):
                width = image.shape[3]
            else:
                width = image.shape[2]
        factor = self.config.vae_scale_factor
        height, width = int(height) - int(height) % factor, int(width) - int(width) % factor
        if height <= 0 or width <= 0:
            raise ValueError(
                f"image size {height}x{width} (height x width) after rounding down to a multiple of "
                f"vae_scale_factor={factor} is empty; pass an image (or height/width) of at least {factor} pixels."
            )
        return height, width

    # -- the main entry points ------------------------------------------------------------------
    def _as_list(self, image: PipelineImageInput) -> list:
        """Validate the input and return a list of same-kind images (batched arrays/tensors stay 4-D)."""
        if self.config.do_convert_grayscale and isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 3:
            # a 3-D grayscale input is (N, H, W) or (1, H, W) / (H, W, 1): add the channel axis
            if isinstance(image, torch.Tensor):
                image = image.unsqueeze(1)
            elif image.shape[-1] == 1:
                image = image[None]
            else:
                image = image[..., None]
        if isinstance(image, (list, tuple)):
            image = list(image)
            if not image:
                raise ValueError("preprocess: got an empty list of images.")
            kinds = {type(i) if not isinstance(i, PIL.Image.Image) else PIL.Image.Image for i in image}
            if len(kinds) > 1:
                raise TypeError(
                    f"preprocess: a list of images must hold one kind (PIL, numpy or torch), got "
                    f"{sorted(k.__name__ for k in kinds)}."
                )
            first = image[0]
            if isinstance(first, (np.ndarray, torch.Tensor)):
                ndims = {i.ndim for i in image}
                if len(ndims) > 1 or not ndims <= {2, 3, 4}:
                    raise ValueError(
                        f"preprocess: list entries must all be 2-D, 3-D or 4-D arrays/tensors of one rank, got "
                        f"{[_describe(i) for i in image]}."
                    )
                if len({tuple(i.shape) for i in image}) > 1 and first.ndim != 4:
                    raise ValueError(
                        f"preprocess: list entries must share one shape to be stacked, got {[_describe(i) for i in image]}; "
                        "resize them first or pass PIL images."
                    )
            elif not isinstance(first, PIL.Image.Image):
                raise TypeError(
                    f"preprocess: expected PIL images, numpy arrays or torch tensors, got a list of {_describe(first)}."
                )
            return image
        if isinstance(image, PIL.Image.Image):
            return [image]
        if isinstance(image, (np.ndarray, torch.Tensor)):
            if image.ndim not in (2, 3, 4):
                raise ValueError(
                    f"preprocess: expected an image of 2, 3 or 4 dims ((H, W), (C, H, W) / (H, W, C) or a batch), "
                    f"got {_describe(image)}."
                )
            return [image]
        raise TypeError(
            f"preprocess: expected a PIL image, numpy array, torch tensor or a list of them, got {_describe(image)}."
        )

    def preprocess(
        self,
        image: PipelineImageInput,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """Images (or masks) -> ``(N, C, H, W)`` float tensor, resized and normalised per the config."""
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"preprocess: resize_mode={resize_mode!r} is not one of {_RESIZE_MODES}.")
        images = self._as_list(image)

        if isinstance(images[0], PIL.Image.Image):
            if crops_coords is not None:
                images = [i.crop(crops_coords) for i in images]
            if self.config.do_resize:
                height, width = self.get_default_height_width(images[0], height, width)
                images = [self.resize(i, height, width, resize_mode=resize_mode) for i in images]
            if self.config.do_convert_rgb:
                images = [self.convert_to_rgb(i) for i in images]
            elif self.config.do_convert_grayscale:
                images = [self.convert_to_grayscale(i) for i in images]
            elif any(i.mode != "RGB" for i in images):
                # a PIL image is a picture, never latents: RGBA / LA / P / L / 1 become RGB (alpha dropped)
                images = [self.convert_to_rgb(i) for i in images]
            out = self.numpy_to_pt(self.pil_to_numpy(images))
        else:
            if resize_mode != "default":
                raise ValueError(
                    f"preprocess: resize_mode={resize_mode!r} needs PIL images, got {_describe(images[0])}."
                )
            if isinstance(images[0], np.ndarray):
                if np.issubdtype(images[0].dtype, np.integer) or images[0].dtype == bool:
                    raise TypeError(
                        f"preprocess: numpy images must be floats in [0, 1], got dtype {images[0].dtype}; "
                        "divide by 255 (np.asarray(img, dtype=np.float32) / 255) or pass a PIL image."
                    )
                arr = np.concatenate(images, axis=0) if images[0].ndim == 4 else np.stack(images, axis=0)
                out = self.numpy_to_pt(arr)
                height, width = self.get_default_height_width(out, height, width)
                if self.config.do_resize:
                    out = self.resize(out, height, width)
            else:
                if not images[0].is_floating_point():
                    raise TypeError(
                        f"preprocess: image tensors must be floating point in [0, 1], got dtype {images[0].dtype}; "
                        "convert with tensor.float() / 255."
                    )
                out = torch.cat(images, dim=0) if images[0].ndim == 4 else torch.stack(images, dim=0)
                if self.config.do_convert_grayscale and out.ndim == 3:
                    out = out.unsqueeze(1)
                if out.ndim != 4:
                    raise ValueError(f"preprocess: could not form an (N, C, H, W) batch from {_describe(out)}.")
                if out.shape[1] == self.config.vae_latent_channels:
                    return out  # already latents
                height, width = self.get_default_height_width(out, height, width)
                if self.config.do_resize:
                    out = self.resize(out, height, width)

        do_normalize = self.config.do_normalize
        if out.numel():
            lo, hi = float(out.min()), float(out.max())
            # decoded images overshoot [-1, 1] a little; far outside it is 0-255 data or noise
            if lo < -2.0 or hi > 2.0:
                raise ValueError(
                    f"preprocess: image values must lie in [0, 1] (or [-1, 1]), got [{lo:.4g}, {hi:.4g}]; "
                    "scale 0-255 data by 1/255."
                )
            if do_normalize and lo < 0:
                logger.warning(
                    "preprocess: image values span [%.4g, %.4g]; treating them as already in [-1, 1] and not "
                    "normalising again (pass [0, 1] images).", lo, hi,
                )
                do_normalize = False
        if do_normalize:
            out = self.normalize(out)
        if self.config.do_binarize:
            out = self.binarize(out)
        return out

    def postprocess(
        self,
        image: torch.Tensor,
        output_type: str = "pil",
        do_denormalize: list[bool] | None = None,
    ) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Decoded ``(N, C, H, W)`` tensor -> ``pil`` (list), ``np`` (NHWC), ``pt`` (NCHW in [0, 1]) or
        ``latent`` (unchanged)."""
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"postprocess: expected a torch.Tensor of shape (N, C, H, W), got {_describe(image)}.")
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"postprocess: output_type={output_type!r} is not one of {_OUTPUT_TYPES}.")
        if output_type == "latent":
            return image
        if image.ndim != 4:
            raise ValueError(f"postprocess: expected a tensor of shape (N, C, H, W), got {_describe(image)}.")
        if do_denormalize is None:
            if self.config.do_normalize:
                image = self.denormalize(image)
        else:
            if len(do_denormalize) != image.shape[0]:
                raise ValueError(
                    f"postprocess: do_denormalize has {len(do_denormalize)} entries for a batch of {image.shape[0]}."
                )
            image = torch.stack([self.denormalize(image[i]) if flag else image[i]
                                 for i, flag in enumerate(do_denormalize)])
        if output_type == "pt":
            return image
        array = self.pt_to_numpy(image)
        if output_type == "np":
            return array
        return self.numpy_to_pil(array)

    def apply_overlay(
        self,
        mask: PIL.Image.Image,
        init_image: PIL.Image.Image,
        image: PIL.Image.Image,
        crop_coords: tuple[int, int, int, int] | None = None,
    ) -> PIL.Image.Image:
        """Paste the unmasked part of ``init_image`` over the inpainted ``image`` (which, with
        ``crop_coords``, covers only that box of the original)."""
        width, height = init_image.width, init_image.height
        masked = PIL.Image.new("RGBa", (width, height))
        masked.paste(init_image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
        masked = masked.convert("RGBA")
        if crop_coords is not None:
            x, y, x2, y2 = crop_coords
            base = PIL.Image.new("RGBA", (width, height))
            base.paste(self.resize(image, height=y2 - y, width=x2 - x, resize_mode="crop"), (x, y))
            image = base.convert("RGB")
        image = image.convert("RGBA")
        image.alpha_composite(masked)
        return image.convert("RGB")
