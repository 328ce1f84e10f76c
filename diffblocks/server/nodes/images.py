"""Image and VAE nodes: VAEDecode, VAEEncode, VAEEncodeForInpaint, LoadImage, LoadImageMask, SaveImage, PreviewImage.

VAE nodes run the family's decode / VAE-encoder blocks. Images are written as PNG with the API prompt in the
`prompt` text chunk (and each `extra_pnginfo` entry, e.g. the UI's `workflow`), named as ComfyUI names them
(`<prefix>_<counter:05>_.png`, the prefix may hold a subfolder, nothing outside the output folder). Pixels are
rounded to 8 bits as the library's own PIL output is (ComfyUI truncates; the two differ by at most 1/255).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Node, NodeOutput, ServerPaths, combo, int_spec, socket, string_spec
from .values import family_module, image_to_nchw, nchw_to_image

__all__ = ["LoadImage", "LoadImageMask", "PreviewImage", "SaveImage", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint",
           "input_image_names",
           "save_images"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def input_image_names(paths: ServerPaths | None) -> list[str]:
    if paths is None or not paths.input_dir.is_dir():
        return []
    return sorted(p.name for p in paths.input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _input_path(paths: ServerPaths | None, name: str) -> Path:
    """An input image by name, also `subfolder/name` (uploads may go to subfolders); never outside --input."""
    if paths is None:
        raise FileNotFoundError("no input folder is configured")
    root = paths.input_dir
    path = (root / name).resolve()
    if root not in path.parents:
        raise FileNotFoundError(f"input image {name!r} is outside the input folder {root}")
    if not path.is_file():
        raise FileNotFoundError(f"input image {name!r} not found in {root}")
    return path


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open(path: Path):
    import PIL.Image
    import PIL.ImageOps

    image = PIL.Image.open(path)
    return PIL.ImageOps.exif_transpose(image)


class VAEDecode(Node):
    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Decode"
    DESCRIPTION = "Decodes latent images back into pixel space images (the family's decode block)."
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"samples": socket("LATENT", tooltip="The latent to be decoded."),
                             "vae": socket("VAE", tooltip="The VAE model used for decoding the latent.")}}

    def run(self, ctx, samples, vae):
        if vae.vae is None:
            raise ValueError(f"checkpoint {vae.name!r} has no VAE")
        family = samples.get("family") or vae.family
        blocks = {"decode": family_module(family).TEXT2IMAGE_BLOCKS["decode"]}
        kwargs: dict[str, Any] = {"latents": samples["samples"], "output_type": "pt"}
        if "height" in ctx.block_inputs(blocks) and samples.get("pixel_size") is not None:
            height, width = samples["pixel_size"]
            scale = samples.get("latent_scale")
            if scale:  # packed latents made for another VAE factor (a MODEL without its VAE assumes 8)
                factor = vae.scale_factor
                height, width = height * factor // scale, width * factor // scale
            kwargs["height"], kwargs["width"] = height, width
        images = ctx.run_blocks(blocks, {"vae": vae.vae}, output="images", **kwargs)
        return (nchw_to_image(images),)


def _encode(ctx: Any, vae: Any, pixels: torch.Tensor, blocks: dict[str, Any], **extra: Any) -> Any:
    image = image_to_nchw(pixels)
    kwargs: dict[str, Any] = {"image": image, **extra}
    accepted = ctx.block_inputs(blocks)
    if "generator" in accepted:
        # the latent distribution is sampled with a fixed seed, so the same pixels give the same latents
        kwargs["generator"] = torch.Generator().manual_seed(0)
    if "height" in accepted:
        kwargs["height"], kwargs["width"] = image.shape[-2], image.shape[-1]
    return ctx.run_blocks(blocks, {"vae": vae.vae}, **kwargs)


class VAEEncode(Node):
    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Encode"
    DESCRIPTION = ("Encodes pixel images into latents with the VAE (the family's image-to-image VAE encoder; the "
                   "latent distribution is sampled with a fixed seed).")
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"pixels": socket("IMAGE"), "vae": socket("VAE")}}

    def run(self, ctx, pixels, vae):
        if vae.vae is None:
            raise ValueError(f"checkpoint {vae.name!r} has no VAE")
        blocks = {"vae_encoder": family_module(vae.family).IMAGE2IMAGE_BLOCKS["vae_encoder"]}
        state = _encode(ctx, vae, pixels, blocks)
        return ({"samples": state.get("image_latents"), "pixel_size": tuple(pixels.shape[1:3]),
                 "family": vae.latent_family},)


class VAEEncodeForInpaint(Node):
    CATEGORY = "latent/inpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    DESCRIPTION = ("Encodes an image for inpainting: the sampler regenerates the masked area (grown by grow_mask_by "
                   "pixels) and keeps the rest, with the family's inpainting blocks (4- or 9-channel models).")
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"pixels": socket("IMAGE"), "vae": socket("VAE"), "mask": socket("MASK"),
                             "grow_mask_by": int_spec(6, min=0, max=64, step=1)}}

    def run(self, ctx, pixels, vae, mask, grow_mask_by):
        if vae.vae is None:
            raise ValueError(f"checkpoint {vae.name!r} has no VAE")
        mask = (mask if mask.ndim == 3 else mask[None]).float()
        if tuple(mask.shape[-2:]) != tuple(pixels.shape[1:3]):
            mask = torch.nn.functional.interpolate(mask[:, None], size=tuple(pixels.shape[1:3]), mode="bilinear")[:, 0]
        if grow_mask_by > 0:  # dilate: a pixel within grow_mask_by of a masked one is masked
            mask = torch.nn.functional.max_pool2d(mask[:, None], 2 * grow_mask_by + 1, stride=1,
                                                  padding=grow_mask_by)[:, 0]
        mask = mask.clamp(0, 1)
        # the latent others see: the image with its masked area grey, as ComfyUI encodes it
        grey = (pixels[..., :3] - 0.5) * (1.0 - mask.round()[..., None]) + 0.5
        blocks = {"vae_encoder": family_module(vae.family).IMAGE2IMAGE_BLOCKS["vae_encoder"]}
        state = _encode(ctx, vae, grey, blocks)
        return ({"samples": state.get("image_latents"), "noise_mask": mask, "pixel_size": tuple(pixels.shape[1:3]),
                 "family": vae.latent_family, "inpaint_pixels": pixels[..., :3], "inpaint_vae": vae.vae},)


class LoadImage(Node):
    CATEGORY = "image"
    DISPLAY_NAME = "Load Image"
    DESCRIPTION = "Loads an image from the input folder; its alpha channel becomes the mask (1 where transparent)."
    RETURN_TYPES = ("IMAGE", "MASK")

    @classmethod
    def input_types(cls, paths):
        return {"required": {"image": combo(input_image_names(paths), image_upload=True)}}

    @classmethod
    def check(cls, inputs, paths):
        try:
            _input_path(paths, inputs["image"])
        except FileNotFoundError as exc:
            return [("image", f"Invalid image file: {inputs['image']} ({exc})")]
        return []

    @classmethod
    def fingerprint(cls, inputs, paths):
        return _file_digest(_input_path(paths, inputs["image"]))

    def run(self, ctx, image):
        picture = _open(_input_path(ctx.paths, image))
        rgb = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
        if "A" in picture.getbands():
            alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0
            mask = 1.0 - torch.from_numpy(alpha)
        else:
            mask = torch.zeros(64, 64, dtype=torch.float32)
        return (torch.from_numpy(rgb)[None], mask[None])


class LoadImageMask(Node):
    CATEGORY = "mask"
    DISPLAY_NAME = "Load Image (as Mask)"
    DESCRIPTION = "Loads one channel of an image from the input folder as a mask (alpha: 1 where transparent)."
    RETURN_TYPES = ("MASK",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"image": combo(input_image_names(paths), image_upload=True),
                             "channel": combo(["alpha", "red", "green", "blue"])}}

    check = LoadImage.check
    fingerprint = LoadImage.fingerprint

    def run(self, ctx, image, channel):
        picture = _open(_input_path(ctx.paths, image))
        if picture.getbands() != ("R", "G", "B", "A"):
            picture = picture.convert("RGBA") if "A" in picture.getbands() or picture.mode == "P" else \
                picture.convert("RGB")
        band = channel[0].upper()
        if band not in picture.getbands():
            return (torch.zeros(1, 64, 64, dtype=torch.float32),)
        values = torch.from_numpy(np.asarray(picture.getchannel(band), dtype=np.float32) / 255.0)
        return ((1.0 - values if band == "A" else values)[None],)


def _save_path(root: Path, prefix: str, width: int, height: int) -> tuple[Path, str, str, int]:
    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    normalized = os.path.normpath(prefix)
    subfolder, filename = os.path.dirname(normalized), os.path.basename(normalized)
    folder = (root / subfolder).resolve()
    if folder != root and root not in folder.parents:
        raise ValueError(f"filename_prefix {prefix!r}: saving outside the output folder {root} is not allowed")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(filename) + r"_(\d{5,})_\.png$")
    counters = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return folder, subfolder.replace(os.sep, "/"), filename, max(counters, default=0) + 1


def save_images(images: torch.Tensor, root: Path, prefix: str, kind: str, prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None, compress_level: int = 4) -> list[dict[str, str]]:
    """Write IMAGE batch `images` as PNGs; returns ComfyUI's ui entries (filename, subfolder, type)."""
    import PIL.Image
    import PIL.PngImagePlugin

    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be an IMAGE batch (B, H, W, C), got shape {tuple(images.shape)}")
    root.mkdir(parents=True, exist_ok=True)
    folder, subfolder, filename, counter = _save_path(root.resolve(), prefix, images.shape[2], images.shape[1])
    results = []
    for image in images:
        array = (image.float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        picture = PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        info = PIL.PngImagePlugin.PngInfo()
        if prompt is not None:
            info.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items():
            info.add_text(key, json.dumps(value))
        name = f"{filename}_{counter:05}_.png"
        picture.save(folder / name, pnginfo=info, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results


class SaveImage(Node):
    CATEGORY = "image"
    DISPLAY_NAME = "Save Image"
    DESCRIPTION = "Saves the input images to the output folder."
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def input_types(cls, paths):
        return {"required": {"images": socket("IMAGE", tooltip="The images to save."),
                             "filename_prefix": string_spec("ComfyUI", tooltip=(
                                 "The prefix for the file to save. This may include formatting information such as "
                                 "%width% or %height%."))},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def run(self, ctx, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        saved = save_images(images, ctx.paths.output_dir, filename_prefix, "output", prompt, extra_pnginfo)
        return NodeOutput((), {"images": saved})


class PreviewImage(Node):
    CATEGORY = "image"
    DISPLAY_NAME = "Preview Image"
    DESCRIPTION = "Saves the input images to the temporary folder for display."
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def input_types(cls, paths):
        return {"required": {"images": socket("IMAGE")},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def run(self, ctx, images, prompt=None, extra_pnginfo=None):
        suffix = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        saved = save_images(images, ctx.paths.temp_dir, f"ComfyUI_temp_{suffix}", "temp", prompt, extra_pnginfo,
                            compress_level=1)
        return NodeOutput((), {"images": saved})
