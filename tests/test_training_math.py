"""Training math and blocks against the reference training scripts' formulas, on fixed tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffblocks import DDPMScheduler
from diffblocks.training import (
    DREAMBOOTH_TRAIN_BLOCKS,
    TEXT2IMAGE_TRAIN_BLOCKS,
    AddNoiseStep,
    EMAWeights,
    PriorPreservationLossStep,
    SampleNoiseStep,
    TargetStep,
    compute_snr,
    min_snr_weights,
)

diffusers = pytest.importorskip("diffusers")
from diffusers.training_utils import EMAModel  # noqa: E402
from diffusers.training_utils import compute_snr as ref_compute_snr  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
_g = torch.Generator().manual_seed(7)
LATENTS = torch.randn(4, 4, 8, 8, generator=_g)
NOISE = torch.randn(4, 4, 8, 8, generator=_g)
PRED = torch.randn(4, 4, 8, 8, generator=_g)
TIMESTEPS = torch.tensor([0, 17, 500, 999])


def _reference_script_loss(scheduler, pred, target, timesteps, snr_gamma):
    """train_text_to_image.py's Min-SNR branch, line for line, with the reference's compute_snr."""
    snr = ref_compute_snr(scheduler, timesteps)
    mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if scheduler.config.prediction_type == "epsilon":
        mse_loss_weights = mse_loss_weights / snr
    elif scheduler.config.prediction_type == "v_prediction":
        mse_loss_weights = mse_loss_weights / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
    return loss.mean()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("snr_gamma", [None, 1.0, 5.0])
def test_target_and_loss_blocks_match_the_reference_script(prediction_type, snr_gamma):
    ours = DDPMScheduler(**SD, prediction_type=prediction_type)
    ref = diffusers.DDPMScheduler(**SD, prediction_type=prediction_type)
    assert torch.equal(compute_snr(ours, TIMESTEPS), ref_compute_snr(ref, TIMESTEPS))

    comps = {"noise_scheduler": ours}
    target = TargetStep().run(comps, image_latents=LATENTS, noise=NOISE, timesteps=TIMESTEPS)["target"]
    ref_target = NOISE if prediction_type == "epsilon" else ref.get_velocity(LATENTS, NOISE, TIMESTEPS)
    assert torch.equal(target, ref_target)
    if prediction_type == "v_prediction":  # the v formula itself: sqrt(a) eps - sqrt(1 - a) x0
        a = ref.alphas_cumprod[TIMESTEPS].view(-1, 1, 1, 1)
        assert torch.allclose(target, a.sqrt() * NOISE - (1 - a).sqrt() * LATENTS, atol=1e-6)

    loss = TEXT2IMAGE_TRAIN_BLOCKS["loss"]().run(comps, model_pred=PRED, target=target, timesteps=TIMESTEPS,
                                                  prediction_type=prediction_type, snr_gamma=snr_gamma)["loss"]
    if snr_gamma is None:
        expected = F.mse_loss(PRED, ref_target)
    else:
        expected = _reference_script_loss(ref, PRED, ref_target, TIMESTEPS, snr_gamma)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    if snr_gamma is not None:  # weighting changes the loss (timesteps with SNR > gamma are down-weighted)
        assert not torch.allclose(loss, F.mse_loss(PRED, ref_target))


def test_min_snr_weights_formula():
    s = DDPMScheduler(**SD)
    snr = s.alphas_cumprod[TIMESTEPS] / (1 - s.alphas_cumprod[TIMESTEPS])
    w = min_snr_weights(s, TIMESTEPS, 5.0, "epsilon")
    torch.testing.assert_close(w, torch.clamp(snr, max=5.0) / snr)
    torch.testing.assert_close(min_snr_weights(s, TIMESTEPS, 5.0, "v_prediction"), torch.clamp(snr, max=5.0) / (snr + 1))


def test_sample_prediction_target_is_the_latents():
    s = DDPMScheduler(**SD, prediction_type="sample")
    out = TargetStep().run({"noise_scheduler": s}, image_latents=LATENTS, noise=NOISE, timesteps=TIMESTEPS)
    assert out["target"] is LATENTS and out["prediction_type"] == "sample"
    with pytest.raises(Exception, match="prediction_type.*epsilon, v_prediction, sample"):
        TargetStep().run({"noise_scheduler": s}, image_latents=LATENTS, noise=NOISE, timesteps=TIMESTEPS,
                         prediction_type="flow")


def test_noise_offset_and_add_noise_follow_the_script():
    s = DDPMScheduler(**SD)
    out = SampleNoiseStep().run({"noise_scheduler": s}, image_latents=LATENTS, noise_offset=0.1,
                                generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the script: randn_like + offset * randn(b, c, 1, 1), then randint
    noise = torch.randn(LATENTS.shape, generator=g)
    noise = noise + 0.1 * torch.randn((4, 4, 1, 1), generator=g)
    timesteps = torch.randint(0, 1000, (4,), generator=g)
    assert torch.equal(out["noise"], noise) and torch.equal(out["timesteps"], timesteps)
    plain = SampleNoiseStep().run({"noise_scheduler": s}, image_latents=LATENTS,
                                  generator=torch.Generator().manual_seed(3))
    assert not torch.equal(plain["noise"], out["noise"])
    noisy = AddNoiseStep().run({"noise_scheduler": s}, image_latents=LATENTS, noise=NOISE, timesteps=TIMESTEPS)
    ref = diffusers.DDPMScheduler(**SD)
    assert torch.equal(noisy["noisy_latents"], ref.add_noise(LATENTS, NOISE, TIMESTEPS))


def test_prior_preservation_loss_block():
    s = DDPMScheduler(**SD)
    target = NOISE
    out = PriorPreservationLossStep().run({"noise_scheduler": s}, model_pred=PRED, target=target,
                                          timesteps=TIMESTEPS, prediction_type="epsilon", num_instance=2,
                                          prior_loss_weight=0.5)
    # train_dreambooth.py: chunk into instance / class halves, loss + prior_loss_weight * prior_loss
    pred, pred_prior = torch.chunk(PRED, 2, dim=0)
    tgt, tgt_prior = torch.chunk(target, 2, dim=0)
    prior = F.mse_loss(pred_prior, tgt_prior)
    torch.testing.assert_close(out["prior_loss"], prior)
    torch.testing.assert_close(out["loss"], F.mse_loss(pred, tgt) + 0.5 * prior)
    assert DREAMBOOTH_TRAIN_BLOCKS["loss"] is PriorPreservationLossStep


def test_ema_matches_the_reference_ema_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)
    ours = EMAWeights(model.parameters())
    ref = EMAModel(model.parameters(), decay=0.9999)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.step(model.parameters())
        ref.step(model.parameters())
    for a, b in zip(ours.shadow, ref.shadow_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    state = ours.state_dict()
    again = EMAWeights(model.parameters())
    again.load_state_dict(state)
    assert again.optimization_step == 5 and all(torch.equal(a, b) for a, b in zip(again.shadow, ours.shadow))


def test_public_names():
    import diffblocks
    from diffblocks.training import TrainingConfig, train_dreambooth, train_text2image

    assert diffblocks.TrainingConfig is TrainingConfig and diffblocks.train_text2image is train_text2image
    assert diffblocks.train_dreambooth is train_dreambooth
