"""SDXL training on the tiny SDXL folder: one step against the reference scripts' computation written here with
diffusers' own classes; the full fine-tune folder and the LoRA file loaded by diffusers' StableDiffusionXLPipeline
and by ours; the SDXL data records (original size, crop top-left); DreamBooth prior preservation; the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_sd import build_sdxl, test_image
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from training_fixtures import RES, fast_config, max_diff, unet_weights

from diffblocks import ModularPipeline
from diffblocks.blocks import InputParam, ModularPipelineBlocks, SequentialPipelineBlocks
from diffblocks.training import SDXL_DREAMBOOTH_TRAIN_BLOCKS, SDXL_TEXT2IMAGE_TRAIN_BLOCKS, Trainer, train
from diffblocks.training.data import transform_image_with_crop

diffusers = pytest.importorskip("diffusers")

SIZES = [(32, 24), (20, 30)]  # (width, height) of the training images: non-square, so the crops are not at 0
CAPTIONS = ["a red pattern", "two blue dots"]
KW = dict(prompt="a pattern", num_inference_steps=3, height=16, width=16)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_sdxl(tmp_path_factory.mktemp("sdxl-train-base"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl-data")
    for i, (size, caption) in enumerate(zip(SIZES, CAPTIONS)):
        test_image(64, seed=30 + i).resize(size).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(caption)
    return root


# -- the reference: the SDXL training scripts' step, with diffusers / transformers classes ----------------------------
def _reference_batch(data, order):
    """What train_text_to_image_sdxl.py's preprocess_train makes (Resize(res) bilinear, CenterCrop(res),
    ToTensor, Normalize(0.5, 0.5)), with its original_sizes (h, w) and crop_top_lefts (y1, x1)."""
    pixels, sizes, crops = [], [], []
    for i in order:
        image = Image.open(data / f"img{i}.png").convert("RGB")
        sizes.append((image.height, image.width))
        w, h = image.size
        new_w, new_h = (RES, int(RES * h / w)) if w <= h else (int(RES * w / h), RES)
        image = image.resize((new_w, new_h), Image.BILINEAR)
        y1, x1 = int(round((new_h - RES) / 2.0)), int(round((new_w - RES) / 2.0))
        image = image.crop((x1, y1, x1 + RES, y1 + RES))
        crops.append((y1, x1))
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1) * 2 - 1)
    return torch.stack(pixels), sizes, crops


def _reference_encode_prompt(text_encoders, tokenizers, captions):
    """encode_prompt of the SDXL scripts: penultimate hidden states concatenated, pooled output of the last."""
    embeds = []
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True, return_dict=False)
        pooled = out[0]
        embeds.append(out[-1][-2])
    return torch.cat(embeds, dim=-1), pooled.view(len(captions), -1)


def _reference_step(base, data, seed, lr, eps, snr_gamma, noise_offset, train_text_encoder, lora=None):
    """One step of the SDXL scripts; `lora`: (rank, alpha, initial adapter weights per component) as the LoRA
    scripts set them up (add_adapter on the frozen models with their LoraConfigs)."""
    from diffusers.training_utils import compute_snr
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = diffusers.UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    vae = diffusers.AutoencoderKL.from_pretrained(str(base), subfolder="vae")
    encoders = [CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder"),
                CLIPTextModelWithProjection.from_pretrained(str(base), subfolder="text_encoder_2")]
    tokenizers = [CLIPTokenizer.from_pretrained(str(base), subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    scheduler = diffusers.DDPMScheduler.from_pretrained(str(base), subfolder="scheduler")
    vae.requires_grad_(False)
    for enc in encoders:
        enc.requires_grad_(train_text_encoder and lora is None)
        enc.train(train_text_encoder)
    unet.train()
    if lora is not None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.utils import set_peft_model_state_dict

        rank, alpha, initial = lora
        unet.requires_grad_(False)
        targets = [(unet, "unet", ["to_k", "to_q", "to_v", "to_out.0"])]
        if train_text_encoder:
            targets += [(e, n, ["q_proj", "k_proj", "v_proj", "out_proj"])
                        for e, n in zip(encoders, ("text_encoder", "text_encoder_2"))]
        for model, name, modules in targets:
            config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=modules)
            if model is unet:
                model.add_adapter(config)
            else:  # what transformers' add_adapter does (it needs a newer peft than the one installed)
                inject_adapter_in_model(config, model)
            set_peft_model_state_dict(model, initial[name])  # the same random init as our run
    trained = [unet] + (encoders if train_text_encoder else [])
    params = [p for m in trained for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=eps)

    # the data order of our loader: a permutation seeded by seed + epoch (the reference shuffles with its own RNG)
    order = torch.randperm(len(SIZES), generator=torch.Generator().manual_seed(seed)).tolist()
    pixel_values, original_sizes, crop_top_lefts = _reference_batch(data, order)
    prompt_embeds, pooled = _reference_encode_prompt(encoders, tokenizers, [CAPTIONS[i] for i in order])

    gen = torch.Generator().manual_seed(seed)  # one stream: VAE sample, noise, offset noise, timesteps
    model_input = vae.encode(pixel_values).latent_dist.sample(generator=gen) * vae.config.scaling_factor
    noise = torch.randn(model_input.shape, generator=gen)
    if noise_offset:
        noise += noise_offset * torch.randn((model_input.shape[0], model_input.shape[1], 1, 1), generator=gen)
    bsz = model_input.shape[0]
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=gen).long()
    noisy = scheduler.add_noise(model_input, noise, timesteps)

    def compute_time_ids(original_size, crops_coords_top_left):
        target_size = (RES, RES)
        return torch.tensor([list(original_size + crops_coords_top_left + target_size)])

    add_time_ids = torch.cat([compute_time_ids(s, c) for s, c in zip(original_sizes, crop_top_lefts)])
    model_pred = unet(noisy, timesteps, prompt_embeds, added_cond_kwargs={"time_ids": add_time_ids,
                                                                          "text_embeds": pooled},
                      return_dict=False)[0]
    target = noise  # the fixture's scheduler predicts epsilon
    if snr_gamma is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        snr = compute_snr(scheduler, timesteps)
        weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss.item(), unet, encoders, (original_sizes, crop_top_lefts)


def _images(folder, lora=None):
    ours = ModularPipeline.from_pretrained(str(folder))
    ours.load_components()
    ours.set_progress_bar_config(disable=True)
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folder))
    ref.set_progress_bar_config(disable=True)
    if lora is not None:
        ours.load_lora_weights(str(lora))
        ref.load_lora_weights(str(lora))
    got = ours(**KW, generator=torch.Generator().manual_seed(0), output_type="np", output="images")
    expected = ref(**KW, generator=torch.Generator().manual_seed(0), output_type="np").images
    return np.asarray(got), np.asarray(expected)


@pytest.mark.parametrize("train_text_encoder", [False, True], ids=["unet", "unet+text-encoders"])
def test_one_step_matches_the_reference_script(base, data, tmp_path, train_text_encoder):
    # Adam's first step is lr * g / (|g| + eps): with the default eps 1e-8 it is lr * sign(g), which turns fp32
    # rounding differences of near-zero gradients (~1e-8 here) into lr-sized weight differences. With eps 1e-5
    # the update follows the gradient, so the weights compare the gradients themselves.
    opts = dict(seed=0, learning_rate=1e-3, adam_epsilon=1e-5, snr_gamma=5.0, noise_offset=0.1)
    out = tmp_path / "out"
    validation = dict(validation_prompt="a pattern", num_validation_images=1, validation_inference_steps=3)
    result = train(fast_config(base, data, out, max_train_steps=1, center_crop=True, lr_scheduler="constant",
                               train_text_encoder=train_text_encoder, **opts, **validation))
    expected_loss, ref_unet, ref_encoders, _ = _reference_step(base, data, opts["seed"], opts["learning_rate"],
                                                               opts["adam_epsilon"], opts["snr_gamma"],
                                                               opts["noise_offset"], train_text_encoder)
    assert result.global_step == 1
    assert result.losses[0] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    ours = unet_weights(out)
    reference = {k: v.detach() for k, v in ref_unet.state_dict().items()}
    assert max_diff(ours, reference) <= 1e-5
    assert max_diff(ours, unet_weights(base)) > 2e-4  # the step moved the weights (20x the tolerance)
    for name, ref_encoder in zip(("text_encoder", "text_encoder_2"), ref_encoders):
        saved = load_file(str(out / name / "model.safetensors"))
        initial = load_file(str(base / name / "model.safetensors"))
        ref_state = {k: v.detach() for k, v in ref_encoder.state_dict().items() if k in saved}
        assert max_diff(saved, ref_state) <= 1e-5
        assert (max_diff(saved, initial) > 2e-4) is train_text_encoder
    if not train_text_encoder:
        return
    # the output folder is a standard SDXL folder: diffusers and diffblocks load it and make the same image
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    got, expected = _images(out)
    assert np.abs(got - expected).max() <= 1e-4
    base_got, _ = _images(base)
    assert np.abs(got - base_got).max() > 1e-3
    # the validation image is our SDXL pipeline's image of the trained weights (seed --seed + 0)
    ours = ModularPipeline.from_pretrained(str(out))
    ours.load_components()
    ours.set_progress_bar_config(disable=True)
    image = ours(**KW, generator=torch.Generator().manual_seed(0), output="images")[0]
    assert [p.name for p in result.validation_images] == ["step-000001-0.png"]
    assert np.array_equal(np.asarray(Image.open(result.validation_images[0])), np.asarray(image))


def test_lora_file_loads_in_the_reference_and_matches_ours(base, data, tmp_path):
    out = tmp_path / "lora"
    result = train(fast_config(base, data, out, lora=True, rank=4, lora_alpha=8, train_text_encoder=True,
                               learning_rate=5e-2, max_train_steps=2))
    assert result.global_step == 2
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj.lora_A.weight" in keys
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys if k.startswith("unet.")} == \
        {"to_q", "to_k", "to_v", "0"}  # to_out.0
    got, expected = _images(base, lora=out)
    assert np.abs(got - expected).max() <= 1e-4
    _, ref_base = _images(base)
    assert np.abs(expected - ref_base).max() > 1e-4  # the adapters change the image


def test_lora_step_matches_the_reference_script(base, data, tmp_path):
    """One LoRA step (UNet + both text encoders) from the same initial adapters as the LoRA scripts' step."""
    from peft.utils import get_peft_model_state_dict

    opts = dict(seed=0, learning_rate=1e-3, adam_epsilon=1e-5, snr_gamma=None, noise_offset=0.0)
    out = tmp_path / "lora-step"
    trainer = Trainer(fast_config(base, data, out, max_train_steps=1, center_crop=True, lr_scheduler="constant",
                                  lora=True, rank=4, lora_alpha=8, train_text_encoder=True, **opts))
    trainer.setup()
    names = ("unet", "text_encoder", "text_encoder_2")
    initial = {n: {k: v.detach().clone() for k, v in get_peft_model_state_dict(getattr(trainer.models, n)).items()}
               for n in names}
    result = trainer.run()
    expected_loss, ref_unet, ref_encoders, _ = _reference_step(
        base, data, opts["seed"], opts["learning_rate"], opts["adam_epsilon"], None, 0.0, True, lora=(4, 8, initial))
    assert result.losses[0] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    moved = 0.0
    for name, model in zip(names, (ref_unet, *ref_encoders)):
        reference = {k.replace("text_model.", ""): v.detach() for k, v in get_peft_model_state_dict(model).items()}
        ours = {k[len(name) + 1:].replace("text_model.", ""): v for k, v in saved.items()
                if k.split(".")[0] == name}
        assert max_diff(ours, reference) <= 1e-5, name
        moved = max(moved, max_diff(ours, {k.replace("text_model.", ""): v for k, v in initial[name].items()}))
    assert moved > 2e-4


def test_data_records_original_size_and_crop_as_the_scripts():
    """The crop top-left is where the crop starts in the resized image after the scripts' flip: cropping the
    (flipped) resized image there gives the training pixels exactly."""
    image = test_image(64, seed=3).resize((40, 24))
    seen = set()
    for k in range(40):
        rng = random.Random(k)
        pixels, (top, left) = transform_image_with_crop(image, RES, False, True, rng)
        resized = image.resize((int(RES * 40 / 24), RES), Image.BILINEAR)  # short side to RES
        flipped = np.asarray(resized)[:, ::-1]
        unflipped = np.asarray(resized)
        window = slice(top, top + RES), slice(left, left + RES)
        arr = np.round(pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        is_flipped = np.array_equal(arr, flipped[window])
        assert is_flipped or np.array_equal(arr, unflipped[window])
        seen.add(is_flipped)
    assert seen == {True, False}
    _, crop = transform_image_with_crop(image, RES, True, False, random.Random(0))
    assert crop == (0, int(round((26 - RES) / 2.0)))


def test_dreambooth_prior_preservation_sdxl(base, tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    for i in range(2):
        test_image(24, seed=40 + i).save(instance / f"dog{i}.png")
    classes = tmp_path / "class"
    record: list = []

    class Record(ModularPipelineBlocks):
        inputs = property(lambda self: [InputParam("loss"), InputParam("prior_loss"), InputParam("add_time_ids")])

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            record.append((bs.prior_loss, bs.add_time_ids))
            return components, state

    blocks = SequentialPipelineBlocks.from_blocks_dict(SDXL_DREAMBOOTH_TRAIN_BLOCKS)
    blocks.sub_blocks.insert("record", Record(), len(blocks.sub_blocks))
    train(fast_config(base, None, tmp_path / "db", workflow="dreambooth", train_data_dir=None,
                      instance_data_dir=str(instance), instance_prompt="a photo of sks dog",
                      with_prior_preservation=True, class_data_dir=str(classes), class_prompt="a photo of dog",
                      num_class_images=2, sample_batch_size=2, class_generation_steps=2, max_train_steps=1,
                      lora=True), blocks=blocks)
    assert sorted(p.name for p in classes.iterdir()) == ["class-00000.png", "class-00001.png"]
    # the class images are our SDXL pipeline's images of the class prompt
    pipe = ModularPipeline.from_pretrained(str(base))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=["a photo of dog"], num_inference_steps=2, height=RES, width=RES,
                 generator=[torch.Generator().manual_seed(1)], output="images")[0]
    assert np.array_equal(np.asarray(Image.open(classes / "class-00001.png")), np.asarray(image))
    prior_loss, time_ids = record[0]
    assert prior_loss is not None
    # instance rows (24x24 originals) then class rows (16x16 generated), each with target size RES x RES
    assert time_ids.tolist() == [[24, 24, 0, 0, RES, RES]] * 2 + [[RES, RES, 0, 0, RES, RES]] * 2
    assert (tmp_path / "db" / "pytorch_lora_weights.safetensors").is_file()


def test_cli_trains_an_sdxl_folder(base, data, tmp_path):
    from diffblocks.cli import main

    out = tmp_path / "cli"
    code = main(["train", "text2image", "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data),
                 "--output_dir", str(out), "--resolution", str(RES), "--train_batch_size", "2", "--max_train_steps",
                 "1", "--report_to", "none", "--seed", "0", "--lora", "--rank", "2"])
    assert code == 0
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 2


def test_default_graph_and_resolution_follow_the_model_family(base, data, tmp_path):
    trainer = Trainer(fast_config(base, data, tmp_path / "x", resolution=None))
    assert list(trainer.blocks.sub_blocks) == list(SDXL_TEXT2IMAGE_TRAIN_BLOCKS)
    trainer.setup()
    assert trainer.config.resolution == 1024  # the SDXL scripts' default
    assert trainer.components.tokenizer_2 is trainer.models.tokenizer_2


def test_sd_graph_on_an_sdxl_model_is_refused_clearly(base, data, tmp_path):
    from diffblocks.blocks import BlockInputError
    from diffblocks.training import TEXT2IMAGE_TRAIN_BLOCKS

    blocks = SequentialPipelineBlocks.from_blocks_dict(TEXT2IMAGE_TRAIN_BLOCKS)
    with pytest.raises(BlockInputError, match="ModelPredictionStep.*added_cond_kwargs"):
        train(fast_config(base, data, tmp_path / "x", max_train_steps=1), blocks=blocks)


def test_pretrained_vae_is_trained_with_and_saved(base, data, tmp_path):
    from model_fixtures import SD_VAE

    torch.manual_seed(99)
    vae_dir = tmp_path / "other-vae"
    diffusers.AutoencoderKL(**SD_VAE).save_pretrained(str(vae_dir))
    plain = train(fast_config(base, data, tmp_path / "plain", max_train_steps=1))
    swapped = train(fast_config(base, data, tmp_path / "swapped", max_train_steps=1,
                                pretrained_vae_model_name_or_path=str(vae_dir)))
    assert abs(plain.losses[0] - swapped.losses[0]) > 1e-4  # other latents, other loss
    written = load_file(str(tmp_path / "swapped" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert max_diff(written, load_file(str(vae_dir / "diffusion_pytorch_model.safetensors"))) == 0
    assert max_diff(load_file(str(tmp_path / "plain" / "vae" / "diffusion_pytorch_model.safetensors")),
                    load_file(str(base / "vae" / "diffusion_pytorch_model.safetensors"))) == 0


def test_sdxl_refiner_is_refused_before_training(data, tmp_path):
    from fixtures_sd import build_sdxl_refiner

    from diffblocks.training import TrainingConfigError

    refiner = build_sdxl_refiner(tmp_path)
    with pytest.raises(TrainingConfigError, match=r"no \['text_encoder', 'tokenizer'\].*refiner"):
        train(fast_config(refiner, data, tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
