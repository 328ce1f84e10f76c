"""Scheduler parity with the reference (diffusers) over whole sampling trajectories.

Both implementations are loaded from the same scheduler_config.json, driven by the same deterministic
fake model from the same starting tensors, and compared step by step: timesteps and sigmas must be
identical (values and dtype), every step's sample must agree to 1e-6 relative to the sample's scale.
"""

from __future__ import annotations

import inspect
import json
import types

import numpy as np
import pytest
import torch

import diffblocks.components.schedulers as ours
from diffblocks.components.schedulers import timesteps as our_ts

diffusers = pytest.importorskip("diffusers")

# -- real checkpoint configs (scheduler/scheduler_config.json as published on the Hub) ------------------
SD15_CONFIG = {  # stable-diffusion-v1-5/stable-diffusion-v1-5
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SD21_CONFIG = {  # stabilityai/stable-diffusion-2-1
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}
SDXL_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False,
}
FLUX_CONFIG = {  # black-forest-labs/FLUX.1-dev
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
SD_LIKE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

SHAPE = (2, 4, 8, 8)
_g = torch.Generator().manual_seed(1234)
X0 = torch.randn(SHAPE, generator=_g)
NOISE = torch.randn(SHAPE, generator=_g)
PROJ = torch.randn(SHAPE, generator=_g)


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """Deterministic, non-linear in x and t, so any schedule or coefficient mistake changes the output."""
    tt = torch.as_tensor(t, dtype=torch.float32) / 1000.0
    return 0.5 * torch.tanh(x) + 0.1 * x + (0.2 + 0.3 * tt) * PROJ


# -- the two sides ------------------------------------------------------------------------------------
def _ref_helpers():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

    return retrieve_timesteps, calculate_shift


def _ref_img2img(scheduler, n, strength, denoising_start, flux):
    """The reference pipelines' get_timesteps, called on a stand-in pipeline object."""
    if flux:
        init_timestep = min(n * strength, n)  # FluxImg2ImgSetTimestepsStep.get_timesteps
        t_start = int(max(n - init_timestep, 0))
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return timesteps, n - t_start
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
        StableDiffusionXLImg2ImgPipeline,
    )

    fake_pipe = types.SimpleNamespace(scheduler=scheduler)
    return StableDiffusionXLImg2ImgPipeline.get_timesteps(fake_pipe, n, strength, "cpu", denoising_start)


def _ref_denoising_end(scheduler, timesteps, n, denoising_end):
    # Inline code of StableDiffusionXLSetTimestepsStep / StableDiffusionXLPipeline.__call__.
    if denoising_end is not None and isinstance(denoising_end, float) and 0 < denoising_end < 1:
        cutoff = int(round(scheduler.config.num_train_timesteps - denoising_end * scheduler.config.num_train_timesteps))
        n = len(list(filter(lambda ts: ts >= cutoff, timesteps)))
        timesteps = timesteps[:n]
    return timesteps, n


def run(lib: str, cls_name: str, folder, opts: dict) -> dict:
    if lib == "ours":
        cls = getattr(ours, cls_name)
        retrieve, shift_fn = our_ts.retrieve_timesteps, our_ts.calculate_shift
    else:
        cls = getattr(diffusers, cls_name)
        retrieve, shift_fn = _ref_helpers()
    sched = cls.from_pretrained(str(folder), subfolder="scheduler", **opts.get("overrides", {}))
    kwargs = {}
    if "mu" in opts:
        kwargs["mu"] = opts["mu"]
    if "seq_len" in opts:
        c = sched.config
        kwargs["mu"] = shift_fn(opts["seq_len"], c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sigmas = opts.get("sigmas")
    if isinstance(sigmas, str) and sigmas == "flux":
        n = opts["steps"]
        sigmas = np.linspace(1.0, 1 / n, n)
    steps = None if (opts.get("timesteps") is not None or sigmas is not None) else opts["steps"]
    timesteps, n = retrieve(sched, steps, "cpu", opts.get("timesteps"), sigmas, **kwargs)
    full = sched.timesteps.clone()
    full_sigmas = sched.sigmas.clone() if hasattr(sched, "sigmas") and sched.sigmas is not None else None

    img2img = opts.get("strength") is not None or opts.get("denoising_start") is not None
    if img2img:
        flux = cls_name == "FlowMatchEulerDiscreteScheduler"
        if lib == "ours":
            timesteps, n = our_ts.img2img_timesteps(sched, n, opts.get("strength", 0.3), opts.get("denoising_start"),
                                                    fractional_strength=flux)
        else:
            timesteps, n = _ref_img2img(sched, n, opts.get("strength", 0.3), opts.get("denoising_start"), flux)
    if opts.get("denoising_end") is not None:
        if lib == "ours":
            timesteps, n = our_ts.denoising_end_timesteps(sched, timesteps, n, opts["denoising_end"])
        else:
            timesteps, n = _ref_denoising_end(sched, timesteps, n, opts["denoising_end"])

    if img2img and len(timesteps):
        latent_t = timesteps[:1].repeat(SHAPE[0])
        if hasattr(sched, "scale_noise"):
            x = sched.scale_noise(X0, latent_t, NOISE)
        else:
            x = sched.add_noise(X0, NOISE, latent_t)
    else:
        x = NOISE * getattr(sched, "init_noise_sigma", 1.0)
    start = x.clone()

    step_kwargs = dict(opts.get("step_kwargs", {}))
    if "seed" in opts:
        step_kwargs["generator"] = torch.Generator().manual_seed(opts["seed"])
    traj = []
    for t in timesteps:
        x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        out = sched.step(fake_model(x_in, t), t, x, **step_kwargs)
        x = out.prev_sample
        traj.append((x.clone(), getattr(out, "pred_original_sample", None)))
    return {"timesteps": full, "sigmas": full_sigmas, "used": timesteps, "n": n, "start": start, "traj": traj,
            "init_noise_sigma": getattr(sched, "init_noise_sigma", 1.0)}


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    # The reference itself yields NaN in a few corner cases (UniPC bh1 onto a zero final sigma): same places.
    nan = torch.isnan(b)
    assert torch.equal(torch.isnan(a), nan), f"{what}: NaN pattern differs"
    a, b = a[~nan], b[~nan]
    if b.numel() == 0:
        return
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= 1e-6 * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


def assert_parity(tmp_path, cls_name: str, config: dict, **opts) -> dict:
    folder = tmp_path / "ckpt"
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": cls_name, **config}))
    mine = run("ours", cls_name, folder, opts)
    ref = run("ref", cls_name, folder, opts)
    assert mine["timesteps"].dtype == ref["timesteps"].dtype
    assert torch.equal(mine["timesteps"], ref["timesteps"]), (mine["timesteps"], ref["timesteps"])
    assert torch.equal(mine["used"], ref["used"]) and mine["n"] == ref["n"]
    if ref["sigmas"] is not None:
        assert mine["sigmas"].dtype == ref["sigmas"].dtype
        assert torch.equal(mine["sigmas"], ref["sigmas"]), (mine["sigmas"], ref["sigmas"])
    assert torch.equal(torch.as_tensor(mine["init_noise_sigma"]), torch.as_tensor(ref["init_noise_sigma"]))
    _close(mine["start"], ref["start"], "initial sample")
    assert len(mine["traj"]) == len(ref["traj"]) == len(ref["used"])
    for i, ((a, pa), (b, pb)) in enumerate(zip(mine["traj"], ref["traj"])):
        assert a.dtype == b.dtype
        _close(a, b, f"step {i} prev_sample")
        if pb is not None:
            _close(pa, pb, f"step {i} pred_original_sample")
    return mine


def _grid(**axes):
    keys = list(axes)
    out = [{}]
    for k in keys:
        out = [{**o, k: v} for o in out for v in axes[k]]
    return out


def _id(case) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


# -- Euler ----------------------------------------------------------------------------------------------------
EULER_GRID = _grid(steps=[1, 7, 20], timestep_spacing=["linspace", "leading", "trailing"],
                   prediction_type=["epsilon", "v_prediction", "sample"], use_karras_sigmas=[False, True])


@pytest.mark.parametrize("case", EULER_GRID, ids=_id)
def test_euler_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "EulerDiscreteScheduler", {**SD_LIKE, "steps_offset": 1, **case}, steps=steps)


EULER_EXTRA = [
    ({**SDXL_CONFIG}, {"steps": 30}),
    ({**SDXL_CONFIG}, {"steps": 25, "strength": 0.3}),
    ({**SDXL_CONFIG}, {"steps": 25, "strength": 1.0}),
    ({**SDXL_CONFIG}, {"steps": 40, "denoising_end": 0.8}),
    ({**SDXL_CONFIG}, {"steps": 40, "denoising_start": 0.8}),
    ({**SDXL_CONFIG, "use_karras_sigmas": True}, {"steps": 13, "strength": 0.55}),
    ({**SD_LIKE, "use_exponential_sigmas": True}, {"steps": 9}),
    ({**SD_LIKE, "final_sigmas_type": "sigma_min"}, {"steps": 9}),
    ({**SD_LIKE, "interpolation_type": "log_linear"}, {"steps": 9}),
    ({**SD_LIKE, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
      "prediction_type": "v_prediction"}, {"steps": 11}),
    ({**SD_LIKE, "beta_schedule": "squaredcos_cap_v2"}, {"steps": 8}),
    ({"beta_schedule": "linear"}, {"steps": 8}),
    ({**SD_LIKE, "timestep_type": "continuous", "prediction_type": "v_prediction"}, {"steps": 6}),
    ({**SD_LIKE, "use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0}, {"steps": 6}),
    ({**SD_LIKE}, {"timesteps": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]}),
    ({**SD_LIKE}, {"sigmas": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]}),
    ({**SD_LIKE}, {"steps": 10, "seed": 3, "step_kwargs": {"s_churn": 1.5}}),
    ({**SD_LIKE}, {"steps": 10, "seed": 3, "step_kwargs": {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 5.0}}),
]


@pytest.mark.parametrize("config,opts", EULER_EXTRA, ids=[f"e{i}" for i in range(len(EULER_EXTRA))])
def test_euler_configs(tmp_path, config, opts):
    assert_parity(tmp_path, "EulerDiscreteScheduler", config, **opts)


# -- Euler ancestral ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _grid(steps=[1, 7, 20], timestep_spacing=["linspace", "leading", "trailing"],
                                       prediction_type=["epsilon", "v_prediction"]), ids=_id)
def test_euler_ancestral_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "EulerAncestralDiscreteScheduler", {**SD_LIKE, "steps_offset": 1, **case},
                  steps=steps, seed=7)


@pytest.mark.parametrize("opts", [{"steps": 25, "strength": 0.6}, {"steps": 12, "denoising_start": 0.5},
                                  {"steps": 15, "denoising_end": 0.7}], ids=["strength", "dstart", "dend"])
def test_euler_ancestral_real_configs(tmp_path, opts):
    cfg = {**SDXL_CONFIG, "_class_name": "EulerAncestralDiscreteScheduler"}
    assert_parity(tmp_path, "EulerAncestralDiscreteScheduler", cfg, seed=11, **opts)
    assert_parity(tmp_path, "EulerAncestralDiscreteScheduler", {**SD_LIKE, "rescale_betas_zero_snr": True,
                                                                "timestep_spacing": "trailing"}, seed=11, **opts)


def test_euler_ancestral_generator_list(tmp_path):
    # One generator per batch element: each element's noise comes from its own stream.
    folder = tmp_path / "ckpt" / "scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text(json.dumps(SD_LIKE))
    outs = []
    for cls in (ours.EulerAncestralDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler):
        s = cls.from_pretrained(str(tmp_path / "ckpt"), subfolder="scheduler")
        s.set_timesteps(4)
        gens = [torch.Generator().manual_seed(i) for i in range(SHAPE[0])]
        x = NOISE * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(fake_model(s.scale_model_input(x, t), t), t, x, generator=gens).prev_sample
        outs.append(x)
    _close(outs[0], outs[1], "generator list")


# -- DDIM -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _grid(steps=[1, 7, 20], timestep_spacing=["linspace", "leading", "trailing"],
                                       prediction_type=["epsilon", "v_prediction", "sample"]), ids=_id)
def test_ddim_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "DDIMScheduler", {**SD_LIKE, "steps_offset": 1, "clip_sample": False, **case},
                  steps=steps)


DDIM_EXTRA = [
    (SD21_CONFIG, {"steps": 25}),
    (SD21_CONFIG, {"steps": 25, "strength": 0.75}),
    (SD21_CONFIG, {"steps": 9, "seed": 5, "step_kwargs": {"eta": 1.0}}),
    (SD15_CONFIG, {"steps": 10}),
    ({"beta_schedule": "linear"}, {"steps": 10}),  # clip_sample=True by default
    ({**SD_LIKE, "thresholding": True, "sample_max_value": 1.5, "clip_sample": False}, {"steps": 10}),
    ({**SD_LIKE, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
      "set_alpha_to_one": False}, {"steps": 10}),
    ({**SD_LIKE, "beta_schedule": "squaredcos_cap_v2"}, {"steps": 10, "seed": 1,
                                                         "step_kwargs": {"eta": 0.5, "use_clipped_model_output": True}}),
]


@pytest.mark.parametrize("config,opts", DDIM_EXTRA, ids=[f"d{i}" for i in range(len(DDIM_EXTRA))])
def test_ddim_configs(tmp_path, config, opts):
    assert_parity(tmp_path, "DDIMScheduler", config, **opts)


# -- PNDM -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", _grid(steps=[1, 2, 7, 20], timestep_spacing=["linspace", "leading", "trailing"],
                                       prediction_type=["epsilon", "v_prediction"]), ids=_id)
def test_pndm_plms_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "PNDMScheduler", {**SD15_CONFIG, **case}, steps=steps)


@pytest.mark.parametrize("opts", [{"steps": 4}, {"steps": 7}, {"steps": 20}], ids=str)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_pndm_prk(tmp_path, opts, spacing):
    assert_parity(tmp_path, "PNDMScheduler", {**SD15_CONFIG, "skip_prk_steps": False, "timestep_spacing": spacing},
                  **opts)


@pytest.mark.parametrize("opts", [{"steps": 50}, {"steps": 50, "strength": 0.8}, {"steps": 9, "strength": 0.35}],
                         ids=str)
def test_pndm_sd15(tmp_path, opts):
    assert_parity(tmp_path, "PNDMScheduler", SD15_CONFIG, **opts)


# -- Flow matching --------------------------------------------------------------------------------------------
FLOW_CASES = [
    (FLUX_CONFIG, {"steps": 28, "sigmas": "flux", "seq_len": 4096}),
    (FLUX_CONFIG, {"steps": 1, "sigmas": "flux", "seq_len": 16}),
    (FLUX_CONFIG, {"steps": 7, "sigmas": "flux", "seq_len": 1024, "strength": 0.6}),
    (FLUX_CONFIG, {"steps": 10, "sigmas": "flux", "seq_len": 256, "strength": 0.35}),
    (FLUX_CONFIG, {"steps": 9, "seq_len": 700}),
    ({**FLUX_CONFIG, "time_shift_type": "linear"}, {"steps": 6, "sigmas": "flux", "seq_len": 1024}),
    ({"shift": 3.0}, {"steps": 5}),
    ({"shift": 1.0}, {"steps": 1}),
    ({"shift": 3.0, "use_karras_sigmas": True}, {"steps": 8}),
    ({"shift": 3.0, "use_exponential_sigmas": True}, {"steps": 8}),
    ({"shift": 3.0, "shift_terminal": 0.1}, {"steps": 8}),
    ({"shift": 3.0, "invert_sigmas": True}, {"steps": 8}),
    ({"shift": 2.0}, {"sigmas": [1.0, 0.8, 0.5, 0.3, 0.1]}),
    ({"shift": 2.0}, {"timesteps": [1000.0, 700.0, 400.0, 100.0]}),
    ({"shift": 3.0, "stochastic_sampling": True}, {"steps": 6, "seed": 9}),
]


@pytest.mark.parametrize("config,opts", FLOW_CASES, ids=[f"f{i}" for i in range(len(FLOW_CASES))])
def test_flow_match(tmp_path, config, opts):
    assert_parity(tmp_path, "FlowMatchEulerDiscreteScheduler", config, **opts)


def test_calculate_shift_matches_reference():
    _, ref_shift = _ref_helpers()
    for seq in (16, 256, 1000, 4096, 8192):
        assert our_ts.calculate_shift(seq) == ref_shift(seq)
        assert our_ts.calculate_shift(seq, 1024, 4096, 0.95, 2.05) == ref_shift(seq, 1024, 4096, 0.95, 2.05)


# -- DPM-Solver++ ------------------------------------------------------------------------------------------
DPM_GRID = _grid(steps=[1, 2, 7, 20], solver_order=[1, 2, 3], solver_type=["midpoint", "heun"],
                 use_karras_sigmas=[False, True])


@pytest.mark.parametrize("case", DPM_GRID, ids=_id)
def test_dpm_solver_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "DPMSolverMultistepScheduler", {**SD_LIKE, **case}, steps=steps)


SDE_GRID = [c for c in _grid(algorithm_type=["sde-dpmsolver++", "sde-dpmsolver"], solver_order=[1, 2, 3],
                              solver_type=["midpoint", "heun"])
            if not (c["algorithm_type"] == "sde-dpmsolver" and c["solver_order"] == 3)]  # no such update exists


@pytest.mark.parametrize("case", SDE_GRID, ids=_id)
def test_dpm_solver_sde(tmp_path, case):
    cfg = {**SD_LIKE, **case}
    if case["algorithm_type"] == "sde-dpmsolver":
        cfg["final_sigmas_type"] = "sigma_min"
    assert_parity(tmp_path, "DPMSolverMultistepScheduler", cfg, steps=9, seed=4)


DPM_EXTRA = [
    ({**SD_LIKE, "timestep_spacing": "leading", "steps_offset": 1}, {"steps": 10}),
    ({**SD_LIKE, "timestep_spacing": "trailing"}, {"steps": 10}),
    ({**SD_LIKE, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
     {"steps": 12}),
    ({**SD_LIKE, "prediction_type": "sample"}, {"steps": 8}),
    ({**SD_LIKE, "lower_order_final": False}, {"steps": 8}),
    ({**SD_LIKE, "lower_order_final": False, "solver_order": 3, "final_sigmas_type": "sigma_min"}, {"steps": 8}),
    ({**SD_LIKE, "final_sigmas_type": "sigma_min"}, {"steps": 8}),
    ({**SD_LIKE, "euler_at_final": True, "final_sigmas_type": "sigma_min"}, {"steps": 20}),
    ({**SD_LIKE, "solver_order": 3}, {"steps": 18}),  # >= 15 steps: no lower-order final steps
    ({**SD_LIKE, "use_lu_lambdas": True}, {"steps": 10}),
    ({**SD_LIKE, "use_exponential_sigmas": True}, {"steps": 10}),
    ({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, {"steps": 10}),
    ({**SD_LIKE, "thresholding": True, "sample_max_value": 1.2}, {"steps": 10}),
    ({**SD_LIKE, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}, {"steps": 10}),
    ({**SD_LIKE, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction",
      "thresholding": True}, {"steps": 10}),
    ({**SD_LIKE, "use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, {"steps": 10}),
    ({**SD_LIKE, "use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction"},
     {"steps": 10, "mu": 0.8}),
    ({**SD_LIKE}, {"timesteps": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]}),
    ({**SDXL_CONFIG, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True},
     {"steps": 25, "strength": 0.3}),
    ({**SDXL_CONFIG, "_class_name": "DPMSolverMultistepScheduler"}, {"steps": 30, "denoising_start": 0.7}),
    ({**SDXL_CONFIG, "_class_name": "DPMSolverMultistepScheduler"}, {"steps": 30, "denoising_end": 0.7}),
    ({**SD_LIKE, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, {"steps": 11, "seed": 8,
                                                                                   "strength": 0.5}),
]


@pytest.mark.parametrize("config,opts", DPM_EXTRA, ids=[f"p{i}" for i in range(len(DPM_EXTRA))])
def test_dpm_solver_configs(tmp_path, config, opts):
    assert_parity(tmp_path, "DPMSolverMultistepScheduler", config, **opts)


# -- UniPC ---------------------------------------------------------------------------------------------------
UNIPC_GRID = _grid(steps=[1, 2, 7, 20], solver_order=[1, 2, 3], solver_type=["bh1", "bh2"],
                   use_karras_sigmas=[False, True])


@pytest.mark.parametrize("case", UNIPC_GRID, ids=_id)
def test_unipc_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "UniPCMultistepScheduler", {**SD_LIKE, **case}, steps=steps)


UNIPC_EXTRA = [
    ({**SD_LIKE, "predict_x0": False}, {"steps": 9}),
    ({**SD_LIKE, "predict_x0": False, "prediction_type": "v_prediction", "solver_order": 3}, {"steps": 9}),
    ({**SD_LIKE, "predict_x0": False, "prediction_type": "sample", "solver_type": "bh1"}, {"steps": 9}),
    ({**SD_LIKE, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
     {"steps": 12}),
    ({**SD_LIKE, "prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1}, {"steps": 9}),
    ({**SD_LIKE, "lower_order_final": False, "solver_order": 3, "final_sigmas_type": "sigma_min"}, {"steps": 9}),
    ({**SD_LIKE, "disable_corrector": [0, 3]}, {"steps": 9}),
    ({**SD_LIKE, "final_sigmas_type": "sigma_min"}, {"steps": 9}),
    ({**SD_LIKE, "final_sigmas_type": "sigma_min", "use_karras_sigmas": True}, {"steps": 9}),
    ({**SD_LIKE, "use_exponential_sigmas": True}, {"steps": 9}),
    ({**SD_LIKE, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 8.0}, {"steps": 9}),
    ({**SD_LIKE, "thresholding": True, "sample_max_value": 1.3}, {"steps": 9}),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, {"steps": 10}),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction", "shift_terminal": 0.05},
     {"steps": 10}),
    ({"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction"},
     {"steps": 10, "mu": 1.1}),
    ({"use_flow_sigmas": True, "flow_shift": 2.0, "prediction_type": "flow_prediction"},
     {"sigmas": np.linspace(1.0, 0.1, 8)}),
    ({**SDXL_CONFIG, "_class_name": "UniPCMultistepScheduler"}, {"steps": 20, "strength": 0.45}),
    ({**SDXL_CONFIG, "_class_name": "UniPCMultistepScheduler"}, {"steps": 20, "denoising_start": 0.6}),
    ({**SD21_CONFIG, "_class_name": "UniPCMultistepScheduler"}, {"steps": 15, "denoising_end": 0.5}),
]


@pytest.mark.parametrize("config,opts", UNIPC_EXTRA, ids=[f"u{i}" for i in range(len(UNIPC_EXTRA))])
def test_unipc_configs(tmp_path, config, opts):
    assert_parity(tmp_path, "UniPCMultistepScheduler", config, **opts)


# -- common surface -----------------------------------------------------------------------------------------------
ALL = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler", "PNDMScheduler",
       "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"]


@pytest.mark.parametrize("source", [SD15_CONFIG, SD21_CONFIG, SDXL_CONFIG], ids=["sd15", "sd21", "sdxl"])
@pytest.mark.parametrize("target", [n for n in ALL if n != "FlowMatchEulerDiscreteScheduler"])
def test_from_config_across_classes(source, target):
    """Swapping the scheduler of a checkpoint: Target.from_config(other scheduler's config) as the reference."""
    src_ours = getattr(ours, source["_class_name"]).from_config(source)
    src_ref = getattr(diffusers, source["_class_name"]).from_config(source)
    a = getattr(ours, target).from_config(src_ours.config)
    b = getattr(diffusers, target).from_config(src_ref.config)
    for key, value in b.config.items():
        if not key.startswith("_"):
            assert a.config[key] == value or (isinstance(value, tuple) and list(value) == a.config[key]), key
    a.set_timesteps(12)
    b.set_timesteps(12)
    assert torch.equal(a.timesteps, b.timesteps)
    x_a = x_b = NOISE * b.init_noise_sigma
    kw_a, kw_b = {}, {}
    if "generator" in inspect.signature(b.step).parameters:
        kw_a, kw_b = {"generator": torch.Generator().manual_seed(2)}, {"generator": torch.Generator().manual_seed(2)}
    for t in b.timesteps:
        x_a = a.step(fake_model(a.scale_model_input(x_a, t), t), t, x_a, **kw_a).prev_sample
        x_b = b.step(fake_model(b.scale_model_input(x_b, t), t), t, x_b, **kw_b).prev_sample
    _close(x_a, x_b, f"{target} from {source['_class_name']}")


def test_save_and_reload_round_trip(tmp_path):
    s = ours.EulerDiscreteScheduler.from_config(SDXL_CONFIG, use_karras_sigmas=True)
    assert s.config.use_karras_sigmas is True and s.config.steps_offset == 1
    s.save_pretrained(tmp_path / "scheduler")
    data = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert data["_class_name"] == "EulerDiscreteScheduler" and data["use_karras_sigmas"] is True
    # The reference reads what we write.
    ref = diffusers.EulerDiscreteScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")
    back = ours.EulerDiscreteScheduler.from_pretrained(str(tmp_path), subfolder="scheduler")
    ref.set_timesteps(10)
    back.set_timesteps(10)
    assert torch.equal(back.sigmas, ref.sigmas) and torch.equal(back.timesteps, ref.timesteps)


def test_return_dict_false_and_output_fields():
    s = ours.EulerDiscreteScheduler.from_config(SDXL_CONFIG)
    s.set_timesteps(3)
    t = s.timesteps[0]
    out = s.step(fake_model(s.scale_model_input(NOISE, t), t), t, NOISE * s.init_noise_sigma, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 2
    d = ours.DDIMScheduler.from_config(SD21_CONFIG)
    d.set_timesteps(3)
    res = d.step(PROJ, d.timesteps[0], NOISE)
    assert res.pred_original_sample is not None and res[0] is res.prev_sample
    f = ours.FlowMatchEulerDiscreteScheduler(shift=3.0)
    f.set_timesteps(2)
    assert len(f.step(PROJ, f.timesteps[0], NOISE, return_dict=False)) == 1


def test_compatibles_lists_all_classes():
    names = {c.__name__ for c in ours.EulerDiscreteScheduler().compatibles}
    assert set(ALL) <= names


def test_begin_index_controls_first_sigma():
    """set_begin_index makes the first step use that sigma even for a timestep repeated in the schedule."""
    for lib in (ours, diffusers):
        s = lib.EulerDiscreteScheduler(**SD_LIKE)
        s.set_timesteps(10)
        s.set_begin_index(4)
        t = s.timesteps[4]
        s.scale_model_input(NOISE, t)
        assert s.step_index == 4


# -- errors ---------------------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="timestep_spacing='middle'.*'linspace', 'leading' or 'trailing'"):
        ours.EulerDiscreteScheduler(timestep_spacing="middle").set_timesteps(5)
    with pytest.raises(ValueError, match="beta_schedule='cubic'"):
        ours.DDIMScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="DDIMScheduler does not support custom `timesteps`"):
        ours.DDIMScheduler().set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ValueError, match="PNDMScheduler does not support custom sigma schedules"):
        our_ts.retrieve_timesteps(ours.PNDMScheduler(), sigmas=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="needs `mu`"):
        ours.FlowMatchEulerDiscreteScheduler.from_config(FLUX_CONFIG).set_timesteps(4)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler has no dynamic shifting"):
        ours.EulerDiscreteScheduler().set_timesteps(4, mu=0.5)
    s = ours.EulerDiscreteScheduler()
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="integer timestep"):
        s.step(NOISE, 3, NOISE)
    with pytest.raises(ValueError, match="timestep 123.0 is not in the current schedule"):
        s.scale_model_input(NOISE, torch.tensor(123.0))
    with pytest.raises(ValueError, match="call `set_timesteps"):
        ours.DDIMScheduler().step(NOISE, torch.tensor(10), NOISE)
    with pytest.raises(ValueError, match="num_inference_steps must be in \\[1, 1000\\]"):
        ours.DDIMScheduler().set_timesteps(1001)


def test_step_signature_accepts_generator_everywhere():
    # The denoise loop passes `generator` to every scheduler.
    for name in ALL:
        assert "generator" in inspect.signature(getattr(ours, name).step).parameters, name


@pytest.mark.parametrize("name", ALL)
def test_half_precision_trajectory_matches(name):
    """fp16 model outputs: the same internal upcasts and output dtype as the reference."""
    cfg = dict(SD_LIKE) if name != "FlowMatchEulerDiscreteScheduler" else {"shift": 3.0}
    results = []
    for lib in (ours, diffusers):
        s = getattr(lib, name).from_config(cfg)
        s.set_timesteps(6)
        x = (NOISE * getattr(s, "init_noise_sigma", 1.0)).half()
        gen = torch.Generator().manual_seed(0)
        kw = {"generator": gen} if "generator" in inspect.signature(getattr(diffusers, name).step).parameters else {}
        for t in s.timesteps:
            x_in = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
            x = s.step(fake_model(x_in.float(), t).half(), t, x, **kw).prev_sample
        results.append(x)
    assert results[0].dtype == results[1].dtype
    assert torch.equal(results[0], results[1])


def test_dpm_and_unipc_errors():
    with pytest.raises(ValueError, match="final_sigmas_type='zero' is not supported with algorithm_type='dpmsolver'"):
        ours.DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="algorithm_type='foo'"):
        ours.DPMSolverMultistepScheduler(algorithm_type="foo")
    with pytest.raises(ValueError, match="`mu` needs use_dynamic_shifting=True"):
        ours.DPMSolverMultistepScheduler().set_timesteps(5, mu=0.3)
    with pytest.raises(ValueError, match="custom `sigmas` need use_flow_sigmas=True"):
        ours.UniPCMultistepScheduler().set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="UniPCMultistepScheduler does not support custom timestep schedules"):
        our_ts.retrieve_timesteps(ours.UniPCMultistepScheduler(), timesteps=[999, 500])
    with pytest.raises(ValueError, match="use_beta_sigmas is not supported"):
        ours.DPMSolverMultistepScheduler(use_beta_sigmas=True)


def test_foreign_solver_type_is_normalised_like_the_reference():
    for lib in (ours, diffusers):
        assert lib.UniPCMultistepScheduler(solver_type="midpoint").config.solver_type == "bh2"
        assert lib.DPMSolverMultistepScheduler(solver_type="bh1").config.solver_type == "midpoint"
        assert lib.DPMSolverMultistepScheduler(algorithm_type="deis", final_sigmas_type="sigma_min").config.algorithm_type == "dpmsolver++"
    explicit = ours.DPMSolverMultistepScheduler(solver_type="heun")
    assert ours.UniPCMultistepScheduler.from_config(explicit.config).config.solver_type == "bh2"
    assert ours.DPMSolverMultistepScheduler.from_config(explicit).config.solver_type == "heun"


def test_img2img_helpers_edge_cases():
    s = ours.EulerDiscreteScheduler.from_config(SDXL_CONFIG)
    s.set_timesteps(10)
    ts, n = our_ts.img2img_timesteps(s, 10, 0.0)
    assert n == 0 and len(ts) == 0
    ts, n = our_ts.img2img_timesteps(s, 10, 0.35)  # int(3.5) = 3 steps kept (SD / SDXL rounding)
    assert n == 3 and torch.equal(ts, s.timesteps[7:]) and s.begin_index == 7
    ts, n = our_ts.img2img_timesteps(s, 10, 0.35, fractional_strength=True)  # Flux keeps 4
    assert n == 4 and s.begin_index == 6
    with pytest.raises(ValueError, match="strength must be in \\[0, 1\\], got 1.5"):
        our_ts.img2img_timesteps(s, 10, 1.5)
    # Not a float in (0, 1): ignored, as the pipelines do.
    ts, n = our_ts.denoising_end_timesteps(s, s.timesteps, 10, 1)
    assert n == 10 and torch.equal(ts, s.timesteps)


def test_round_trip_through_another_class_keeps_source_keys():
    """PNDM -> Euler -> PNDM keeps skip_prk_steps / set_alpha_to_one, as the reference does."""
    for lib in (ours, diffusers):
        euler = lib.EulerDiscreteScheduler.from_config(lib.PNDMScheduler.from_config(SD15_CONFIG).config)
        assert euler.config.timestep_spacing == "linspace"  # PNDM's own default is not carried over
        back = lib.PNDMScheduler.from_config(euler.config)
        assert back.config.skip_prk_steps is True and back.config.steps_offset == 1
