"""PromptEngine: ComfyUI's default text-to-image workflow runs on a tiny SD folder and gives the Python preset's image;
outputs are cached by input signature; validation reports ComfyUI's error types; interrupt and node errors leave
the engine usable."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from fixtures_sd import build_sd15

from diffblocks import Interrupted, ModularPipeline
from diffblocks.components.schedulers import EulerDiscreteScheduler
from diffblocks.server import ExecutionHooks, NodeExecutionError, NodeRegistry, PromptEngine

WORKFLOW = Path(__file__).parent / "data" / "comfyui_default_workflow_api.json"
SIZE, STEPS = 32, 3


def default_workflow(seed: int = 156680208700286, steps: int = STEPS) -> dict:
    prompt = json.loads(WORKFLOW.read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "sd15"
    prompt["5"]["inputs"].update(width=SIZE, height=SIZE)
    prompt["3"]["inputs"].update(steps=steps, seed=seed)
    return prompt


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def hooks(self, **overrides) -> ExecutionHooks:
        kw = dict(on_cached=lambda ids: self.events.append(("cached", list(ids))),
                  on_executing=lambda node: self.events.append(("executing", node)),
                  on_progress=lambda node, value, total: self.events.append(("progress", node, value, total)),
                  on_preview=lambda node, image: self.events.append(("preview", node, image.size)),
                  on_executed=lambda node, ui: self.events.append(("executed", node, ui)))
        kw.update(overrides)
        return ExecutionHooks(**kw)

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-engine")
    models = root / "models"
    folder = build_sd15(models / "checkpoints")
    engine = PromptEngine(models_dir=models, input_dir=root / "input", output_dir=root / "output",
                          temp_dir=root / "temp", registry=NodeRegistry(include_blocks=False))
    return engine, folder, root


def run(engine: PromptEngine, prompt: dict, recorder: Recorder | None = None, prompt_id: str = "p", **hooks):
    result = engine.validate(prompt)
    assert result.ok, (result.error, result.node_errors)
    recorder = recorder or Recorder()
    return engine.execute(prompt_id, prompt, result.outputs, recorder.hooks(**hooks)), recorder


def preset_image(folder: Path, seed: int, clip_skip: int | None = None) -> np.ndarray:
    """The same generation through the Python SD preset: 'euler' + 'normal' is EulerDiscreteScheduler with
    linspace timestep spacing on the checkpoint's scheduler config (samplers.py)."""
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    wf = json.loads(WORKFLOW.read_text())
    kwargs = dict(prompt=wf["6"]["inputs"]["text"], negative_prompt=wf["7"]["inputs"]["text"],
                  generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                  guidance_scale=float(wf["3"]["inputs"]["cfg"]), height=SIZE, width=SIZE, output="images")
    if clip_skip is not None:
        kwargs["clip_skip"] = clip_skip
    return np.asarray(pipe(**kwargs)[0])


def saved(root: Path, ui: dict, node: str = "9") -> np.ndarray:
    entry = ui[node]["images"][0]
    folder = root / ("output" if entry["type"] == "output" else "temp")
    return np.asarray(PIL.Image.open(folder / entry["subfolder"] / entry["filename"]))


def test_default_workflow_writes_png_with_prompt_and_hooks(setup):
    engine, _, root = setup
    prompt = default_workflow(seed=11)
    ui, rec = run(engine, prompt)
    entry = ui["9"]["images"][0]
    assert entry["type"] == "output" and entry["subfolder"] == "" and entry["filename"].startswith("ComfyUI_")
    path = root / "output" / entry["filename"]
    with PIL.Image.open(path) as image:
        assert image.size == (SIZE, SIZE)
        assert json.loads(image.text["prompt"])["3"]["inputs"]["seed"] == 11  # the API prompt in the PNG
    executing = [e[1] for e in rec.of("executing")]
    assert executing[-1] is None and set(executing[:-1]) == set(prompt)
    assert executing.index("3") > max(executing.index(n) for n in ("4", "5", "6", "7"))
    assert [e[2:] for e in rec.of("progress")] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert {e[1] for e in rec.of("progress")} == {"3"}
    assert len(rec.of("preview")) == STEPS and all(e[1] == "3" for e in rec.of("preview"))
    assert rec.of("executed") == [("executed", "9", ui["9"])]


def test_parity_with_python_preset_and_clip_skip(setup):
    engine, folder, root = setup
    seed = 5
    ui, _ = run(engine, default_workflow(seed=seed))
    np.testing.assert_array_equal(saved(root, ui), preset_image(folder, seed))
    # CLIPSetLastLayer -2 is the presets' clip_skip=1 (which, as in the reference pipelines, applies to the
    # prompt only: the negative prompt keeps the last layer, so only node 6 goes through it here)
    prompt = default_workflow(seed=seed)
    prompt["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}
    prompt["6"]["inputs"]["clip"] = ["10", 0]
    ui, _ = run(engine, prompt)
    skipped = saved(root, ui)
    np.testing.assert_array_equal(skipped, preset_image(folder, seed, clip_skip=1))
    assert not np.array_equal(skipped, preset_image(folder, seed))


def test_seed_change_reruns_only_the_sampler_and_after(setup):
    engine, _, root = setup
    first, _ = run(engine, default_workflow(seed=21))
    second, rec = run(engine, default_workflow(seed=22))
    assert rec.of("cached") == [("cached", ["4", "6", "7", "5"])]
    assert [e[1] for e in rec.of("executing")] == ["3", "8", "9", None]
    assert not np.array_equal(saved(root, first), saved(root, second))
    # the same prompt again: everything cached, the UI output re-reported, no new file
    files = sorted((root / "output").iterdir())
    third, rec = run(engine, default_workflow(seed=22))
    assert rec.of("cached") == [("cached", ["4", "6", "7", "5", "3", "8", "9"])]
    assert [e[1] for e in rec.of("executing")] == [None]
    assert third == second and rec.of("executed") == [("executed", "9", second["9"])]
    assert sorted((root / "output").iterdir()) == files


def test_cache_is_bounded_by_memory(setup):
    engine, folder, root = setup
    small = PromptEngine(models_dir=engine.paths.models_dir, input_dir=root / "input", output_dir=root / "output",
                         cache_memory=0, registry=NodeRegistry(include_blocks=False),
                         components_manager=engine.components_manager)
    run(small, default_workflow(seed=1))
    _, rec = run(small, default_workflow(seed=2))
    cached = rec.of("cached")[0][1]
    # with no room for tensors only the nodes whose outputs hold none (loader handles, SaveImage) stay cached
    assert "4" in cached and not {"6", "7", "5", "3", "8"} & set(cached)
    assert small.cache.nbytes == 0


def _errors(engine, prompt):
    result = engine.validate(prompt)
    assert not result.ok
    return result


@pytest.mark.parametrize("edit, node, kind", [
    (lambda p: p["6"]["inputs"].pop("text"), "6", "required_input_missing"),
    (lambda p: p["3"]["inputs"].update(positive=["6"]), "3", "bad_linked_input"),
    (lambda p: p["3"]["inputs"].update(positive=["99", 0]), "3", "bad_linked_input"),
    (lambda p: p["3"]["inputs"].update(positive=["6", 3]), "3", "bad_linked_input"),
    (lambda p: p["3"]["inputs"].update(positive=["4", 0]), "3", "return_type_mismatch"),
    (lambda p: p["3"]["inputs"].update(steps=0), "3", "value_smaller_than_min"),
    (lambda p: p["3"]["inputs"].update(denoise=2.0), "3", "value_bigger_than_max"),
    (lambda p: p["3"]["inputs"].update(steps="many"), "3", "invalid_input_type"),
    (lambda p: p["3"]["inputs"].update(sampler_name="heun"), "3", "value_not_in_list"),
    (lambda p: p["4"]["inputs"].update(ckpt_name="../../etc/passwd"), "4", "value_not_in_list"),
    (lambda p: p["3"]["inputs"].update(sampler_name="ddim", scheduler="karras"), "3", "custom_validation_failed"),
    (lambda p: p["8"]["inputs"].update(samples=["9", 0]), "8", "bad_linked_input"),
])
def test_validation_errors(setup, edit, node, kind):
    engine = setup[0]
    prompt = default_workflow()
    edit(prompt)
    result = _errors(engine, prompt)
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert set(result.error) == {"type", "message", "details", "extra_info"}
    record = result.node_errors[node]
    assert record["class_type"] == prompt[node]["class_type"] and record["dependent_outputs"] == ["9"]
    assert [e["type"] for e in record["errors"]] == [kind]
    assert set(record["errors"][0]) == {"type", "message", "details", "extra_info"}
    assert len(result.node_errors) == 1  # downstream nodes are not blamed


def test_validation_prompt_level_errors(setup):
    engine = setup[0]
    prompt = default_workflow()
    prompt["3"]["class_type"] = "NoSuchNode"
    result = _errors(engine, prompt)
    assert result.error["type"] == "invalid_prompt" and "NoSuchNode" in result.error["message"]
    prompt = default_workflow()
    del prompt["9"]
    assert _errors(engine, prompt).error["type"] == "prompt_no_outputs"
    prompt = default_workflow()
    del prompt["5"]["class_type"]
    assert _errors(engine, prompt).error["type"] == "invalid_prompt"
    prompt = default_workflow()
    prompt["3"]["inputs"]["latent_image"] = ["8", 0]  # 8 -> 3 -> 8
    prompt["8"]["inputs"]["samples"] = ["3", 0]
    result = _errors(engine, prompt)
    assert result.error["type"] in ("prompt_outputs_failed_validation",)
    assert any(e["type"] in ("dependency_cycle", "return_type_mismatch")
               for r in result.node_errors.values() for e in r["errors"])


def test_interrupt_stops_within_one_step_and_next_prompt_runs(setup):
    engine, _, root = setup
    rec = Recorder()
    prompt = default_workflow(seed=31, steps=50)

    def on_progress(node, value, total):
        rec.events.append(("progress", node, value, total))
        if value == 2:
            threading.Thread(target=engine.interrupt).start()  # from another thread, as a server does
            threading.Event().wait(0.2)  # let it land while this step is still the current one

    with pytest.raises(Interrupted):
        run(engine, prompt, rec, on_progress=on_progress)
    assert max(e[2] for e in rec.of("progress")) <= 3
    ui, _ = run(engine, default_workflow(seed=32))
    assert saved(root, ui).shape == (SIZE, SIZE, 3)


def test_failing_node_is_named_and_next_prompt_runs(setup):
    engine, _, root = setup
    (root / "input").mkdir(exist_ok=True)
    (root / "input" / "broken.png").write_bytes(b"not a png")
    prompt = {"10": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
              "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}}
    with pytest.raises(NodeExecutionError) as info:
        run(engine, prompt)
    err = info.value
    assert (err.node_id, err.class_type) == ("10", "LoadImage")
    assert err.exception_type.endswith("UnidentifiedImageError") and err.traceback
    assert err.current_inputs == {"image": ["broken.png"]}
    ui, _ = run(engine, default_workflow(seed=41))
    assert saved(root, ui).shape == (SIZE, SIZE, 3)


def test_load_image_vae_encode_img2img_and_preview(setup):
    engine, _, root = setup
    (root / "input").mkdir(exist_ok=True)
    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:8, :8, 3] = 0  # a transparent corner -> mask 1 there
    PIL.Image.fromarray(rgba, "RGBA").save(root / "input" / "red.png")
    prompt = default_workflow(seed=51)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "red.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"].update(latent_image=["11", 0], denoise=0.5)
    prompt["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}
    prompt["13"] = {"class_type": "LoadImageMask", "inputs": {"image": "red.png", "channel": "alpha"}}
    ui, rec = run(engine, prompt)
    assert saved(root, ui).shape == (SIZE, SIZE, 3)
    preview = saved(root, ui, "12")
    assert ui["12"]["images"][0]["type"] == "temp" and (preview[..., 0] == 200).all()
    # img2img at strength 0.5 of 3 steps runs int(3 * 0.5) = 1 step (the reference pipelines' get_timesteps)
    assert [e[2:] for e in rec.of("progress")] == [(1, 1)]
    image, mask = engine.cache.get(engine._signatures(prompt, ["10"])["10"]).outputs
    assert image.shape == (1, SIZE, SIZE, 3) and mask.shape == (1, SIZE, SIZE)
    assert mask[0, :8, :8].eq(1).all() and mask[0, 8:, 8:].eq(0).all()


def test_execute_does_not_mutate_prompt_and_rejects_unknown_links(setup):
    engine = setup[0]
    prompt = default_workflow(seed=61)
    before = copy.deepcopy(prompt)
    run(engine, prompt)
    assert prompt == before


# -- diffblocks run ------------------------------------------------------------------------------------------------
def test_diffblocks_run_matches_engine_and_preset(setup, tmp_path):
    import subprocess
    import sys

    engine, folder, _ = setup
    seed = 5
    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps(default_workflow(seed=999)))
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "diffblocks", "run", str(workflow), "--models", str(engine.paths.models_dir),
         "--output", str(out), "--input", str(tmp_path / "in"), "--set", f"3.inputs.seed={seed}",
         "--set", "9.inputs.filename_prefix=cli/run"],
        cwd=repo, env={**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = Path(proc.stdout.strip().splitlines()[-1])
    assert written == out / "cli" / "run_00001_.png"
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(written)), preset_image(folder, seed))


def test_diffblocks_run_errors(setup, tmp_path, capsys):
    from diffblocks.cli import main

    engine = setup[0]
    models = str(engine.paths.models_dir)
    workflow = tmp_path / "w.json"
    workflow.write_text(json.dumps(default_workflow()))

    def error(*argv: str) -> str:
        assert main(["run", *argv, "--models", models, "--output", str(tmp_path / "o")]) == 1
        return capsys.readouterr().err

    assert "not found" in error(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{nope")
    assert "not a JSON file" in error(str(tmp_path / "bad.json"))
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    assert "Export (API)" in error(str(tmp_path / "ui.json"))
    assert "no node '42'" in error(str(workflow), "--set", "42.inputs.text=x")
    assert "has no input 'txt'" in error(str(workflow), "--set", "6.inputs.txt=x")
    assert "NODE.inputs.NAME" in error(str(workflow), "--set", "6.text=x")
    message = error(str(workflow), "--set", "3.inputs.steps=0")
    assert "node 3 (KSampler): value_smaller_than_min" in message


# -- LoraLoader ----------------------------------------------------------------------------------------------------
def test_lora_loader_matches_preset_and_leaves_other_branches(setup):
    diffusers = pytest.importorskip("diffusers")
    from adapter_fixtures import allow_reference_text_encoder_lora, write_reference_lora

    allow_reference_text_encoder_lora()
    engine, folder, root = setup
    loras = engine.paths.models_dir / "loras"
    ref = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    written = write_reference_lora(ref, loras / "written", seed=3)
    written.rename(loras / "style.safetensors")
    seed = 71
    prompt = default_workflow(seed=seed)
    prompt["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                           "lora_name": "style.safetensors",
                                                           "strength_model": 0.7, "strength_clip": 0.5}}
    prompt["3"]["inputs"]["model"] = ["10", 0]
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["10", 1]
    ui, _ = run(engine, prompt)
    with_lora = saved(root, ui)

    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras / "style.safetensors"), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[{"unet": 0.7, "text_encoder": 0.5}])
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    wf = default_workflow(seed=seed)
    expected = pipe(prompt=wf["6"]["inputs"]["text"], negative_prompt=wf["7"]["inputs"]["text"],
                    generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, guidance_scale=8.0,
                    height=SIZE, width=SIZE, output="images")[0]
    np.testing.assert_array_equal(with_lora, np.asarray(expected))
    # the checkpoint's own MODEL / CLIP (no LoraLoader on the way) still give the image without the LoRA
    ui, _ = run(engine, default_workflow(seed=seed))
    without = saved(root, ui)
    np.testing.assert_array_equal(without, preset_image(folder, seed))
    assert not np.array_equal(without, with_lora)


# -- ControlNet ----------------------------------------------------------------------------------------------------
def test_controlnet_apply_advanced_matches_preset(setup):
    from fixtures_sd import build_controlnet, test_image

    from diffblocks import ControlNetModel

    engine, folder, root = setup
    net_folder = build_controlnet(engine.paths.models_dir / "controlnet")
    (root / "input").mkdir(exist_ok=True)
    test_image(SIZE, seed=4).save(root / "input" / "control.png")
    seed = 81
    prompt = default_workflow(seed=seed)
    prompt["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "controlnet"}}
    prompt["21"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
    prompt["22"] = {"class_type": "ControlNetApplyAdvanced",
                    "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["20", 0],
                               "image": ["21", 0], "strength": 0.8, "start_percent": 0.0, "end_percent": 0.5}}
    prompt["3"]["inputs"].update(positive=["22", 0], negative=["22", 1])
    ui, _ = run(engine, prompt)
    got = saved(root, ui)

    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(controlnet=ControlNetModel.from_pretrained(str(net_folder)),
                           scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    wf = default_workflow(seed=seed)
    expected = pipe(prompt=wf["6"]["inputs"]["text"], negative_prompt=wf["7"]["inputs"]["text"],
                    generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, guidance_scale=8.0,
                    height=SIZE, width=SIZE, control_image=PIL.Image.open(root / "input" / "control.png"),
                    controlnet_conditioning_scale=0.8, control_guidance_start=0.0, control_guidance_end=0.5,
                    output="images")[0]
    np.testing.assert_array_equal(got, np.asarray(expected))
    assert not np.array_equal(got, preset_image(folder, seed))


# -- KSamplerAdvanced ----------------------------------------------------------------------------------------------
def _advanced(prompt: dict, node: str, latent: list, **inputs) -> None:
    ks = prompt["3"]["inputs"]
    prompt[node] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ks["model"], "positive": ks["positive"], "negative": ks["negative"], "latent_image": latent,
        "noise_seed": ks["seed"], "steps": ks["steps"], "cfg": ks["cfg"], "sampler_name": ks["sampler_name"],
        "scheduler": ks["scheduler"], "add_noise": "enable", "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable", **inputs}}


def test_ksampler_advanced_full_range_and_split_equal_ksampler(setup):
    engine, _, root = setup
    seed, steps = 91, 4
    plain, _ = run(engine, default_workflow(seed=seed, steps=steps))
    expected = saved(root, plain)
    full = default_workflow(seed=seed, steps=steps)
    _advanced(full, "30", ["5", 0])
    full["8"]["inputs"]["samples"] = ["30", 0]
    ui, _ = run(engine, full)
    np.testing.assert_array_equal(saved(root, ui), expected)
    # the refiner pattern: steps 0-2 returning the leftover noise, then 2-4 without adding noise; a deterministic
    # sampler continues exactly where it stopped, so the result is the one-pass result
    split = default_workflow(seed=seed, steps=steps)
    _advanced(split, "31", ["5", 0], end_at_step=2, return_with_leftover_noise="enable")
    _advanced(split, "32", ["31", 0], start_at_step=2, add_noise="disable")
    split["8"]["inputs"]["samples"] = ["32", 0]
    ui, rec = run(engine, split)
    assert [e[1:] for e in rec.of("progress")] == [("31", 1, 2), ("31", 2, 2), ("32", 1, 2), ("32", 2, 2)]
    np.testing.assert_allclose(saved(root, ui).astype(float), expected.astype(float), atol=1)
    bad = default_workflow(seed=seed, steps=steps)
    _advanced(bad, "33", ["5", 0], end_at_step=2)
    bad["8"]["inputs"]["samples"] = ["33", 0]
    result = engine.validate(bad)
    assert [e["type"] for e in result.node_errors["33"]["errors"]] == ["custom_validation_failed"]


# -- inpainting ----------------------------------------------------------------------------------------------------
def test_vae_encode_for_inpaint_matches_preset_inpainting(setup):
    from fixtures_sd import test_image

    engine, folder, root = setup
    (root / "input").mkdir(exist_ok=True)
    test_image(SIZE, seed=8).save(root / "input" / "photo.png")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8:24, 4:20] = 255
    PIL.Image.fromarray(mask, "L").save(root / "input" / "mask.png")
    seed = 101
    prompt = default_workflow(seed=seed)
    prompt["40"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    prompt["41"] = {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red"}}
    prompt["42"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["40", 0], "vae": ["4", 2],
                                                                     "mask": ["41", 0], "grow_mask_by": 0}}
    prompt["3"]["inputs"]["latent_image"] = ["42", 0]
    run(engine, prompt)
    # the decoded IMAGE (float): the pixels reach the blocks as a tensor here and as a PIL image in the preset
    got = engine.cache.get(engine._signatures(prompt, engine._order(prompt, ["8"]))["8"]).outputs[0][0].numpy()

    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    wf = default_workflow(seed=seed)
    expected = pipe(prompt=wf["6"]["inputs"]["text"], negative_prompt=wf["7"]["inputs"]["text"],
                    generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, guidance_scale=8.0,
                    height=SIZE, width=SIZE, image=PIL.Image.open(root / "input" / "photo.png"),
                    mask_image=PIL.Image.open(root / "input" / "mask.png"), strength=1.0, output_type="np", output="images")[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_docs_example_runs(setup, tmp_path, monkeypatch, capsys):
    """The engine example of docs/server.md, as written, in a folder holding models/ (the tiny SD checkpoint)."""
    import re

    engine = setup[0]
    text = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "ExecutionHooks(" in block]
    (tmp_path / "models").symlink_to(engine.paths.models_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/server.md", "exec"), {"prompt": default_workflow(seed=7)})
    printed = capsys.readouterr().out
    assert "ComfyUI_00001_.png" in printed and (tmp_path / "output" / "ComfyUI_00001_.png").is_file()


def test_latent_batch_gives_one_file_per_image(setup):
    engine, folder, root = setup
    seed = 111
    prompt = default_workflow(seed=seed)
    prompt["5"]["inputs"]["batch_size"] = 2
    ui, _ = run(engine, prompt)
    entries = ui["9"]["images"]
    assert len(entries) == 2 and entries[0]["filename"] != entries[1]["filename"]
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                                        timestep_spacing="linspace"))
    wf = default_workflow(seed=seed)
    expected = pipe(prompt=wf["6"]["inputs"]["text"], negative_prompt=wf["7"]["inputs"]["text"],
                    generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, guidance_scale=8.0,
                    height=SIZE, width=SIZE, num_images_per_prompt=2, output="images")
    for entry, image in zip(entries, expected):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(root / "output" / entry["filename"])),
                                      np.asarray(image))
