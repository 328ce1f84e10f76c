"""VaeImageProcessor parity with the reference (diffusers) processor, plus our error messages."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as RefProcessor

from diffblocks.components.image_processor import VaeImageProcessor

IMAGE_CFG = {"vae_scale_factor": 8}
MASK_CFG = {"vae_scale_factor": 8, "do_normalize": False, "do_binarize": True, "do_convert_grayscale": True}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pil(w: int, h: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = _rng(seed).integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return PIL.Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)


def _pair(cfg: dict) -> tuple[VaeImageProcessor, RefProcessor]:
    return VaeImageProcessor(**cfg), RefProcessor(**cfg)


def _same(ours, ref) -> None:
    assert type(ours) is type(ref) or (isinstance(ours, list) and isinstance(ref, list))
    if isinstance(ref, torch.Tensor):
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    elif isinstance(ref, np.ndarray):
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)
    else:
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert a.mode == b.mode and a.size == b.size
            np.testing.assert_array_equal(np.array(a), np.array(b))


def _inputs():
    torch.manual_seed(0)
    pil = _pil(67, 45, 1)
    arr = _rng(2).random((45, 67, 3), dtype=np.float32)
    ten = torch.rand(3, 45, 67)
    return {
        "pil": pil,
        "pil_list": [pil, _pil(67, 45, 3)],
        "pil_rgba": _pil(40, 33, 4, "RGBA"),
        "pil_gray": _pil(40, 33, 5, "L"),
        "np": arr,
        "np_batch": _rng(3).random((2, 45, 67, 3), dtype=np.float32),
        "np_list": [arr, _rng(4).random((45, 67, 3), dtype=np.float32)],
        "np_2d": _rng(5).random((45, 67), dtype=np.float32),
        "pt": ten,
        "pt_batch": torch.rand(2, 3, 45, 67),
        "pt_list": [ten, torch.rand(3, 45, 67)],
        "pt_signed": torch.rand(1, 3, 32, 40) * 2 - 1,
    }


_NAMES = ["pil", "pil_list", "np", "np_batch", "np_list", "np_2d", "pt", "pt_batch", "pt_list", "pt_signed"]
_CASES = (
    [(IMAGE_CFG, n) for n in _NAMES]
    + [({"vae_scale_factor": 16, "resample": "bilinear"}, n) for n in _NAMES]
    + [({"do_resize": False}, n) for n in _NAMES if n != "np_2d"]
    + [({"do_convert_rgb": True}, n) for n in _NAMES + ["pil_rgba"]]
)


@pytest.mark.parametrize("cfg,name", _CASES)
def test_preprocess_parity(cfg: dict, name: str) -> None:
    ours, ref = _pair(cfg)
    image = _inputs()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.preprocess(image)
    _same(ours.preprocess(image), expected)


@pytest.mark.parametrize("kwargs", [{"height": 32, "width": 48}, {"height": 40}, {"width": 100},
                                    {"resize_mode": "fill", "height": 64, "width": 32},
                                    {"resize_mode": "fill", "height": 24, "width": 64},
                                    {"resize_mode": "crop", "height": 64, "width": 32},
                                    {"resize_mode": "crop", "height": 24, "width": 64},
                                    {"crops_coords": (3, 5, 50, 40)}])
def test_preprocess_sizes_and_modes_parity(kwargs: dict) -> None:
    ours, ref = _pair(IMAGE_CFG)
    data = _inputs()
    for name in ("pil", "pil_list"):
        _same(ours.preprocess(data[name], **kwargs), ref.preprocess(data[name], **kwargs))
    if "resize_mode" not in kwargs and "crops_coords" not in kwargs:
        for name in ("np_batch", "pt_batch"):
            _same(ours.preprocess(data[name], **kwargs), ref.preprocess(data[name], **kwargs))


@pytest.mark.parametrize("name", ["pil_gray", "pil", "np_2d", "pt_batch"])
def test_mask_preprocess_parity(name: str) -> None:
    ours, ref = _pair(MASK_CFG)
    data = _inputs()
    image = data[name]
    if name == "pt_batch":
        image = image[:, :1]
    _same(ours.preprocess(image, height=32, width=48), ref.preprocess(image, height=32, width=48))


def test_mask_grayscale_3d_inputs_parity() -> None:
    ours, ref = _pair(MASK_CFG)
    torch.manual_seed(0)
    for image in (torch.rand(2, 40, 48), _rng(6).random((40, 48, 1), dtype=np.float32),
                  _rng(7).random((2, 40, 48), dtype=np.float32)):
        out = ours.preprocess(image)
        _same(out, ref.preprocess(image))
        assert set(torch.unique(out).tolist()) <= {0.0, 1.0}


def test_latents_pass_through() -> None:
    ours, ref = _pair(IMAGE_CFG)
    latents = torch.randn(2, 4, 9, 11)
    assert ours.preprocess(latents) is not None
    _same(ours.preprocess(latents), ref.preprocess(latents))


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
@pytest.mark.parametrize("channels", [3, 1])
def test_postprocess_parity(output_type: str, channels: int) -> None:
    ours, ref = _pair(IMAGE_CFG)
    torch.manual_seed(1)
    image = torch.randn(2, channels, 16, 24) * 1.2
    _same(ours.postprocess(image, output_type=output_type), ref.postprocess(image, output_type=output_type))
    flags = [True, False]
    _same(ours.postprocess(image, output_type=output_type, do_denormalize=flags),
          ref.postprocess(image, output_type=output_type, do_denormalize=flags))


def test_postprocess_no_normalize_config_parity() -> None:
    ours, ref = _pair({"do_normalize": False})
    image = torch.rand(1, 3, 8, 8)
    _same(ours.postprocess(image, output_type="np"), ref.postprocess(image, output_type="np"))


def test_round_trip_pil() -> None:
    proc = VaeImageProcessor()
    image = _pil(32, 24, 9)
    back = proc.postprocess(proc.preprocess(image), output_type="pil")[0]
    np.testing.assert_array_equal(np.array(back), np.array(image))


@pytest.mark.parametrize("args", [(None, None), (30, None), (None, 70), (17, 33)])
def test_get_default_height_width_parity(args) -> None:
    ours, ref = _pair(IMAGE_CFG)
    data = _inputs()
    h, w = args
    for image in (data["pil"], data["np_batch"], data["pt_batch"]):
        assert ours.get_default_height_width(image, h, w) == ref.get_default_height_width(image, h, w)


def _mask(w: int, h: int, box: tuple[int, int, int, int]) -> PIL.Image.Image:
    arr = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return PIL.Image.fromarray(arr, mode="L")


@pytest.mark.parametrize("box,size,pad", [((10, 10, 20, 30), (64, 64), 0), ((10, 10, 20, 30), (64, 64), 8),
                                          ((0, 40, 60, 48), (32, 64), 4), ((50, 0, 64, 5), (96, 64), 32),
                                          ((2, 2, 62, 46), (48, 48), 0)])
def test_get_crop_region_parity(box, size, pad) -> None:
    mask = _mask(64, 48, box)
    width, height = size
    assert VaeImageProcessor.get_crop_region(mask, width, height, pad=pad) == RefProcessor.get_crop_region(
        mask, width, height, pad=pad)


@pytest.mark.parametrize("crop", [None, (8, 4, 40, 36)])
def test_apply_overlay_parity(crop) -> None:
    ours, ref = _pair(IMAGE_CFG)
    mask = _mask(48, 40, (10, 8, 30, 28))
    init = _pil(48, 40, 11)
    image = _pil(48, 40, 12) if crop is None else _pil(24, 24, 12)
    _same([ours.apply_overlay(mask, init, image, crop)], [ref.apply_overlay(mask, init, image, crop)])


def test_config_round_trip(tmp_path) -> None:
    proc = VaeImageProcessor(**MASK_CFG)
    proc.save_pretrained(tmp_path / "mask_processor")
    loaded = VaeImageProcessor.from_pretrained(tmp_path, subfolder="mask_processor")
    assert dict(loaded.config) == dict(proc.config)
    # the reference reads our file too
    ref = RefProcessor.from_config(RefProcessor.load_config(tmp_path, subfolder="mask_processor"))
    assert ref.config.do_binarize and ref.config.do_convert_grayscale and not ref.config.do_normalize


# -- errors -----------------------------------------------------------------------------------------
def test_bad_config() -> None:
    with pytest.raises(ValueError, match="do_convert_rgb and do_convert_grayscale"):
        VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ValueError, match="resample='cubic'"):
        VaeImageProcessor(resample="cubic")


def test_bad_modes() -> None:
    proc = VaeImageProcessor()
    with pytest.raises(ValueError, match="output_type='jpeg'"):
        proc.postprocess(torch.zeros(1, 3, 8, 8), output_type="jpeg")
    with pytest.raises(ValueError, match="resize_mode='stretch'"):
        proc.preprocess(_pil(16, 16), resize_mode="stretch")
    with pytest.raises(ValueError, match="needs PIL images"):
        proc.preprocess(torch.rand(1, 3, 16, 16), resize_mode="fill")


def test_bad_ranges_and_types() -> None:
    proc = VaeImageProcessor()
    with pytest.raises(ValueError, match=r"\[0, 1\].*got \[0, 255\]"):
        proc.preprocess(np.full((16, 16, 3), 255.0, dtype=np.float32) * np.linspace(0, 1, 16)[:, None, None])
    with pytest.raises(TypeError, match="dtype uint8"):
        proc.preprocess(np.zeros((16, 16, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="got str"):
        proc.preprocess("image.png")
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        proc.postprocess(np.zeros((1, 8, 8, 3)))


def test_bad_shapes() -> None:
    proc = VaeImageProcessor()
    with pytest.raises(ValueError, match="got Tensor of shape \\(1, 1, 3, 16, 16\\)"):
        proc.preprocess(torch.rand(1, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="share one shape"):
        proc.preprocess([torch.rand(3, 16, 16), torch.rand(3, 24, 16)])
    with pytest.raises(TypeError, match="one kind"):
        proc.preprocess([_pil(16, 16), torch.rand(3, 16, 16)])
    with pytest.raises(ValueError, match="is empty"):
        proc.preprocess(_pil(5, 5))
    with pytest.raises(ValueError, match="do_denormalize has 1 entries for a batch of 2"):
        proc.postprocess(torch.zeros(2, 3, 8, 8), do_denormalize=[True])
    with pytest.raises(ValueError, match="no non-zero pixels"):
        proc.get_crop_region(_mask(16, 16, (0, 0, 0, 0)), 16, 16)
