"""callback_on_step_end as the reference pipelines define it: the same callback gives the same result in the
reference (StableDiffusionPipeline, StableDiffusionXLPipeline, FluxPipeline) and in diffblocks, on tiny folders."""

from __future__ import annotations

import logging

import pytest
import torch
from fixtures_flux import MAX_SEQUENCE_LENGTH, build_flux
from fixtures_sd import build_sd15, build_sdxl

from diffblocks import BlockInputError, ModularPipeline

diffusers = pytest.importorskip("diffusers")
logging.getLogger("diffusers").setLevel(logging.ERROR)

STEPS = 3
FAMILIES = {
    "sd15": (build_sd15, "StableDiffusionPipeline", {"prompt": "a red cat", "negative_prompt": "ugly"}),
    "sdxl": (build_sdxl, "StableDiffusionXLPipeline", {"prompt": "a red cat", "negative_prompt": "ugly"}),
    "flux": (build_flux, "FluxPipeline", {"prompt": "a red cat", "height": 32, "width": 32,
                                          "max_sequence_length": MAX_SEQUENCE_LENGTH}),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    build, ref_cls, kwargs = FAMILIES[request.param]
    folder = build(tmp_path_factory.mktemp(f"callbacks-{request.param}"))
    ours = ModularPipeline.from_pretrained(str(folder))
    ours.load_components(torch_dtype=torch.float32)
    ours.set_progress_bar_config(disable=True)
    ref = getattr(diffusers, ref_cls).from_pretrained(str(folder), torch_dtype=torch.float32)
    ref.set_progress_bar_config(disable=True)
    return request.param, ours, ref, dict(kwargs, num_inference_steps=STEPS, output_type="latent")


def _run_both(ours, ref, kwargs, make_callback, tensor_inputs=None):
    """Run both with a fresh callback each; returns (ours, reference, what each callback saw)."""
    seen_ours, seen_ref = [], []
    extra = {} if tensor_inputs is None else {"callback_on_step_end_tensor_inputs": tensor_inputs}
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(0),
                   callback_on_step_end=make_callback(seen_ref), **extra).images
    got = ours(**kwargs, generator=torch.Generator().manual_seed(0), callback_on_step_end=make_callback(seen_ours),
               output="images", **extra)
    return got, expected, seen_ours, seen_ref


def _close(got, expected, tol=1e-4):
    err = float((got - expected).abs().max())
    assert err <= tol * max(float(expected.abs().max()), 1.0), f"max abs difference {err:.2e}"


def test_scaling_latents_at_step_1(family):
    name, ours, ref, kwargs = family

    def make(seen):
        def callback(pipe, step_index, timestep, callback_kwargs):
            seen.append((step_index, float(timestep), callback_kwargs["latents"].clone()))
            if step_index == 1:
                return {"latents": callback_kwargs["latents"] * 0.7}
            return callback_kwargs
        return callback

    got, expected, seen_ours, seen_ref = _run_both(ours, ref, kwargs, make)
    assert [s[:2] for s in seen_ours] == [s[:2] for s in seen_ref]
    for (_, _, a), (_, _, b) in zip(seen_ours, seen_ref):
        _close(a, b)
    _close(got, expected)
    # and the callback did change the result
    plain = ours(**kwargs, generator=torch.Generator().manual_seed(0), output="images")
    assert float((plain - got).abs().max()) > 1e-3


def test_modifying_prompt_embeds(family):
    name, ours, ref, kwargs = family
    names = ["latents", "prompt_embeds"] + (["add_text_embeds", "add_time_ids"] if name == "sdxl" else [])

    def make(seen):
        def callback(pipe, step_index, timestep, callback_kwargs):
            seen.append({k: v.clone() for k, v in callback_kwargs.items()})
            if step_index == 0:
                out = {"prompt_embeds": callback_kwargs["prompt_embeds"] * 1.5}
                if name == "sdxl":
                    out["add_text_embeds"] = callback_kwargs["add_text_embeds"] * 0.5
                return out
            return {}
        return callback

    got, expected, seen_ours, seen_ref = _run_both(ours, ref, kwargs, make, tensor_inputs=names)
    assert [sorted(s) for s in seen_ours] == [sorted(s) for s in seen_ref]
    for a, b in zip(seen_ours, seen_ref):
        for key in a:
            assert a[key].shape == b[key].shape, key
            _close(a[key], b[key])
    _close(got, expected)


def test_callback_interrupt_flag_keeps_result_so_far(family):
    # the reference's documented way to stop early from a callback: pipe._interrupt = True
    name, ours, ref, kwargs = family

    def make(seen):
        def callback(pipe, step_index, timestep, callback_kwargs):
            seen.append(step_index)
            if step_index == 1:
                pipe._interrupt = True
            return callback_kwargs
        return callback

    got, expected, seen_ours, seen_ref = _run_both(ours, ref, kwargs, make)
    assert seen_ours == seen_ref == [0, 1]
    _close(got, expected)
    # the flag is reset for the next call
    again = ours(**kwargs, generator=torch.Generator().manual_seed(0), output="images")
    full = ref(**kwargs, generator=torch.Generator().manual_seed(0)).images
    _close(again, full)


class _Scale:
    """Duck-typed like the reference's PipelineCallback: brings its own tensor_inputs."""

    tensor_inputs = ["latents"]

    def __call__(self, pipe, step_index, timestep, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * 1.1} if step_index == 0 else callback_kwargs


def test_callback_object_with_tensor_inputs(family):
    name, ours, ref, kwargs = family
    got, expected, _, _ = _run_both(ours, ref, kwargs, lambda seen: _Scale())
    _close(got, expected)


def test_unknown_tensor_input_is_a_clear_error(family):
    name, ours, ref, kwargs = family
    with pytest.raises(BlockInputError, match="callback_on_step_end_tensor_inputs.*has to be in.*latents.*"
                                              "found \\['noise_pred'\\]"):
        ours(**kwargs, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise_pred"])
    with pytest.raises(BlockInputError, match="must be callable"):
        ours(**kwargs, callback_on_step_end=3)
