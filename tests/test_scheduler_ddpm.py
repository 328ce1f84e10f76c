"""DDPMScheduler parity with the reference: betas, sampling trajectories, add_noise, get_velocity, variances."""

from __future__ import annotations

import pytest
import torch
from test_schedulers import NOISE, PROJ, SD_LIKE, X0, _close, _grid, _id, assert_parity, fake_model

import diffblocks
import diffblocks.components.schedulers as ours

diffusers = pytest.importorskip("diffusers")

DDPM_GRID = _grid(steps=[1, 10], timestep_spacing=["linspace", "leading", "trailing"],
                  prediction_type=["epsilon", "v_prediction", "sample"],
                  variance_type=["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"])


@pytest.mark.parametrize("case", DDPM_GRID, ids=_id)
def test_ddpm_grid(tmp_path, case):
    case = dict(case)
    steps = case.pop("steps")
    assert_parity(tmp_path, "DDPMScheduler", {**SD_LIKE, "clip_sample": False, "steps_offset": 1, **case},
                  steps=steps, seed=3)


@pytest.mark.parametrize("config", [
    {"beta_schedule": "linear", "clip_sample": True},
    {"beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "clip_sample_range": 0.5},
    {"beta_schedule": "sigmoid", "clip_sample": False},
    {"beta_schedule": "laplace", "clip_sample": False},
    {**SD_LIKE, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"beta_schedule": "linear", "thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9},
    {"trained_betas": torch.linspace(1e-4, 0.02, 1000).tolist()},
], ids=["linear", "cosine", "sigmoid", "laplace", "zero-snr", "threshold", "trained"])
def test_ddpm_configs(tmp_path, config):
    assert_parity(tmp_path, "DDPMScheduler", config, steps=8, seed=5)


def test_ddpm_custom_timesteps_and_full_chain(tmp_path):
    assert_parity(tmp_path, "DDPMScheduler", SD_LIKE, timesteps=[900, 500, 120, 7, 0], seed=1)
    # without set_timesteps the chain is every training step: step from t to t-1
    a, b = ours.DDPMScheduler(**SD_LIKE), diffusers.DDPMScheduler(**SD_LIKE)
    for t in (999, 500, 1, 0):
        _close(a.step(fake_model(NOISE, t), t, NOISE, generator=torch.Generator().manual_seed(t)).prev_sample,
               b.step(fake_model(NOISE, t), t, NOISE, generator=torch.Generator().manual_seed(t)).prev_sample,
               f"t={t}")


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_learned_variance(variance_type):
    a = ours.DDPMScheduler(variance_type=variance_type)
    b = diffusers.DDPMScheduler(variance_type=variance_type)
    a.set_timesteps(5)
    b.set_timesteps(5)
    out = torch.cat([PROJ, torch.tanh(PROJ)], dim=1)  # eps and a variance channel in [-1, 1]
    x = torch.cat([NOISE, NOISE], 0)[:2]
    for t in b.timesteps:
        xa = a.step(out, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        xb = b.step(out, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        _close(xa, xb, f"t={int(t)}")


@pytest.mark.parametrize("config", [{}, SD_LIKE, {**SD_LIKE, "rescale_betas_zero_snr": True}])
def test_ddpm_training_functions(config):
    a, b = ours.DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    assert torch.equal(a.betas, b.betas) and torch.equal(a.alphas_cumprod, b.alphas_cumprod)
    t = torch.tensor([0, 999])
    assert torch.equal(a.add_noise(X0, NOISE, t), b.add_noise(X0, NOISE, t))
    assert torch.equal(a.get_velocity(X0, NOISE, t), b.get_velocity(X0, NOISE, t))
    half = X0.half()
    assert torch.equal(a.add_noise(half, NOISE.half(), t), b.add_noise(half, NOISE.half(), t))
    assert len(a) == 1000 and a.init_noise_sigma == 1.0 and a.scale_model_input(X0, 3) is X0


def test_ddpm_config_round_trip_and_export(tmp_path):
    assert diffblocks.DDPMScheduler is ours.DDPMScheduler
    s = ours.DDPMScheduler(**SD_LIKE, prediction_type="v_prediction", variance_type="fixed_large")
    s.save_pretrained(tmp_path)
    ref = diffusers.DDPMScheduler.from_pretrained(str(tmp_path))
    assert ref.config.prediction_type == "v_prediction" and ref.config.variance_type == "fixed_large"
    ref.save_pretrained(tmp_path / "ref")
    back = ours.DDPMScheduler.from_pretrained(str(tmp_path / "ref"))
    assert back.config.beta_schedule == "scaled_linear" and back.variance_type == "fixed_large"
    # an inference scheduler built from the training config (what a saved fine-tune does)
    ddim = ours.DDIMScheduler.from_config(s.config)
    assert ddim.config.prediction_type == "v_prediction"


def test_ddpm_errors():
    with pytest.raises(ValueError, match="variance_type='wide'.*fixed_small"):
        ours.DDPMScheduler(variance_type="wide")
    with pytest.raises(ValueError, match="beta_schedule='cubic'.*laplace"):
        ours.DDPMScheduler(beta_schedule="cubic")
    s = ours.DDPMScheduler()
    with pytest.raises(ValueError, match="strictly descending"):
        s.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="below num_train_timesteps"):
        s.set_timesteps(timesteps=[1000, 2])
    with pytest.raises(ValueError, match="either num_inference_steps or timesteps"):
        s.set_timesteps(3, timesteps=[3, 2])
    with pytest.raises(ValueError, match="num_inference_steps must be in"):
        s.set_timesteps(2000)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="not in the current schedule"):
        s.step(PROJ, 3, NOISE)
