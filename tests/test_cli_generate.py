"""The `diffblocks` command as a user runs it (a subprocess): generate's options applied as the Python API
applies them, the PNG metadata round trip through `diffblocks info`, exit codes and messages, help text,
`--version`, and `inspect`'s formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_sd import build_controlnet, build_sd15, test_image
from PIL import Image

from diffblocks import ControlNetModel, DPMSolverMultistepScheduler, ModularPipeline, __version__
from diffblocks.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "diffblocks", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-generate")
    control = root / "edges.png"
    test_image(32, seed=5).save(control)
    return {"sd15": build_sd15(root), "controlnet": build_controlnet(root), "control": control}


def parse_a1111(text: str) -> tuple[str, str | None, dict[str, str]]:
    """A1111 `parameters` as image browsers read it: prompt lines, `Negative prompt:`, then `Key: value, ...`."""
    lines = text.split("\n")
    fields = dict(item.split(": ", 1) for item in lines[-1].split(", "))
    negative = next((line[len("Negative prompt: "):] for line in lines[:-1] if line.startswith("Negative prompt: ")),
                    None)
    prompt = "\n".join(line for line in lines[:-1] if not line.startswith("Negative prompt: "))
    return prompt, negative, fields


def test_generate_applies_every_option_and_stores_the_call_in_the_png(folders, tmp_path):
    out = tmp_path / "cat.png"
    result = run_cli("generate", "--model", str(folders["sd15"]), "--prompt", "a red cat", "--negative-prompt",
                     "blurry", "--steps", "3", "--seed", "7", "--guidance", "4.0", "--scheduler", "dpm++2m",
                     "--karras", "--clip-skip", "1", "--controlnet", str(folders["controlnet"]), "--control-image",
                     str(folders["control"]), "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"Saved {out}" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("Seed 7: 1 image(s) in ") and " s (3 steps, DPMSolverMultistepScheduler, cpu, " \
        "float32)" in summary  # CPU here: the defaults are --device cpu and fp32

    # the same call through the Python API gives the same pixels: every option was applied
    pipe = ModularPipeline.from_pretrained(str(folders["sd15"]))
    pipe.load_components(torch_dtype=torch.float32)
    pipe.update_components(
        scheduler=DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True),
        controlnet=ControlNetModel.from_pretrained(str(folders["controlnet"])))
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a red cat", negative_prompt="blurry", num_inference_steps=3, guidance_scale=4.0,
                    clip_skip=1, control_image=Image.open(folders["control"]).convert("RGB"),
                    generator=torch.Generator().manual_seed(7), output="images")[0]
    with Image.open(out) as image:
        assert np.array_equal(np.asarray(image), np.asarray(expected))
        text = dict(image.text)

    prompt, negative, fields = parse_a1111(text["parameters"])
    assert prompt == "a red cat" and negative == "blurry"
    assert fields["Steps"] == "3" and fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras"
    assert fields["CFG scale"] == "4" and fields["Seed"] == "7" and fields["Size"] == f"{expected.width}x" \
        f"{expected.height}"
    assert fields["Clip skip"] == "2"  # diffusers' clip_skip=1 is A1111's "Clip skip: 2"
    assert fields["Model"] == Path(folders["sd15"]).name and fields["ControlNet"] == "controlnet"
    assert fields["Version"] == f"diffblocks {__version__}"
    record = json.loads(text["diffblocks"])
    assert record["call"] == {
        "prompt": "a red cat", "negative_prompt": "blurry", "num_inference_steps": 3, "guidance_scale": 4.0,
        "clip_skip": 1, "control_image": str(Path(folders["control"]).resolve()),
        "generator": {"device": "cpu", "manual_seed": 7}}
    assert record["scheduler"] == "DPMSolverMultistepScheduler" and record["karras"] is True
    assert record["device"] == "cpu" and record["dtype"] == "float32" and record["seed"] == 7

    # `info` reads both chunks back
    shown = run_cli("info", str(out))
    assert shown.returncode == 0, shown.stderr
    assert text["parameters"] in shown.stdout and '"manual_seed": 7' in shown.stdout
    as_json = run_cli("info", str(out), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == record


def test_random_seed_is_printed_and_stored(folders, tmp_path, capsys):
    out = tmp_path / "random.png"
    assert main(["generate", "--model", str(folders["sd15"]), "--prompt", "a cat", "--steps", "1", "--seed", "-1",
                 "--out", str(out), "--quiet"]) == 0
    seed = int(capsys.readouterr().out.strip().splitlines()[-1].split(":")[0].removeprefix("Seed "))
    with Image.open(out) as image:
        record = json.loads(image.text["diffblocks"])
        assert f"Seed: {seed}," in image.text["parameters"]
    assert record["seed"] == seed and record["call"]["generator"]["manual_seed"] == seed


def test_generate_bad_option_combination_exits_1_with_a_message(tmp_path):
    result = run_cli("generate", "--model", "m", "--prompt", "a", "--controlnet", "somewhere")
    assert result.returncode == 1
    assert "--controlnet and --control-image go together" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "ddim", "--karras"], "--karras: the ddim scheduler (DDIMScheduler) has no Karras sigmas"),
    (["--device", "cuda"], "--device cuda, but this torch has no CUDA device; use --device cpu"),
])
def test_generate_bad_options_are_refused_before_loading(folders, tmp_path, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(folders["sd15"]), "--prompt", "a", "--out", str(tmp_path / "x.png"), *args])
    assert message in str(exit_.value.code)
    assert not (tmp_path / "x.png").exists()


def test_generate_unknown_scheduler_is_a_usage_error():
    result = run_cli("generate", "--model", "m", "--prompt", "a", "--scheduler", "euler_b")
    assert result.returncode == 2 and "invalid choice: 'euler_b'" in result.stderr


def test_info_without_parameters_or_file(tmp_path):
    plain = tmp_path / "plain.png"
    test_image(8).save(plain)
    result = run_cli("info", str(plain))
    assert result.returncode == 1 and "has no generation parameters" in result.stderr
    missing = run_cli("info", str(tmp_path / "missing.png"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"diffblocks {__version__}"


def test_every_generate_option_says_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    generate = sub.choices["generate"]
    undocumented = [a.option_strings[0] for a in generate._actions
                    if a.option_strings and a.dest != "help" and not a.required and "default" not in (a.help or "")]
    assert not undocumented, f"generate options whose help does not give the default: {undocumented}"
    text = " ".join(generate.format_help().split())
    assert "(default: 30)" in text and "fp16 on CUDA, fp32 on the CPU" in text and "cuda when available" in text


def test_inspect_prints_a_tree_and_data_flow_by_default():
    text = run_cli("inspect", "sd")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("StableDiffusionAutoBlocks(") and "Sub-Blocks:" in text.stdout
    assert "Data flow (execution order" in text.stdout and "flowchart LR" not in text.stdout
    # where each value comes from: the denoise loop reads the latents of whichever prepare_latents branch ran
    assert "latents* <- prepare_latents.*" in text.stdout and "prompt_embeds* <- text_encoder" in text.stdout
    assert "Validation: no problems" in text.stdout



def test_inspect_mermaid_and_json_formats(capsys):
    assert main(["inspect", "sd", "--format", "mermaid"]) == 0
    assert capsys.readouterr().out.startswith("flowchart LR")
    assert main(["inspect", "toy", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_generate_lora_with_scale_matches_the_python_api(folders, tmp_path, capsys):
    import diffusers
    from adapter_fixtures import write_reference_lora

    reference = diffusers.StableDiffusionPipeline.from_pretrained(str(folders["sd15"]))
    lora = write_reference_lora(reference, tmp_path / "lora", seed=1, text_encoders=False)  # written by the reference
    out = tmp_path / "lora.png"
    assert main(["generate", "--model", str(folders["sd15"]), "--prompt", "a cat", "--steps", "2", "--seed", "3",
                 "--lora", f"{lora}:0.5", "--out", str(out), "--quiet"]) == 0
    pipe = ModularPipeline.from_pretrained(str(folders["sd15"]))
    pipe.load_components(torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        return np.asarray(pipe(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(3),
                               output="images")[0])

    plain = draw()
    pipe.set_adapters([pipe.load_lora_weights(str(lora))], adapter_weights=[0.5])
    with Image.open(out) as image:
        got = np.asarray(image)
        text = dict(image.text)
    assert np.array_equal(got, draw()) and not np.array_equal(got, plain)
    assert json.loads(text["diffblocks"])["loras"] == [{"path": str(lora), "scale": 0.5}]
    assert parse_a1111(text["parameters"])[2]["Lora"] == "pytorch_lora_weights:0.5"
