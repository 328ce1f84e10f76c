"""One pipeline, several threads: every call returns exactly what a sequential call returns.

Also: a saved preset pipeline loads in a fresh process, and passing a returned state back works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from fixtures_sd import build_sd15, test_image

from diffblocks import BlockInputError, DPMSolverMultistepScheduler, ModularPipeline, PipelineState

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("reentrancy"))


@pytest.fixture(scope="module")
def pipe(sd15_folder):
    pipe = ModularPipeline.from_pretrained(sd15_folder)
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cases() -> dict[str, dict]:
    image, mask = test_image(32), test_image(32, mode="L")
    return {
        "text2img-cfg": dict(prompt="a red cat", num_inference_steps=3, height=32, width=32),
        "text2img-nocfg": dict(prompt="a blue dog", num_inference_steps=4, guidance_scale=1.0, height=32, width=32),
        "img2img-cfg": dict(prompt="a cat", image=image, strength=0.7, num_inference_steps=4),
        "inpaint-nocfg": dict(prompt="a dog", image=image, mask_image=mask, strength=0.8, num_inference_steps=3,
                              guidance_scale=1.0),
        "inpaint-cfg": dict(prompt="a dog", image=image, mask_image=mask, strength=1.0, num_inference_steps=2,
                            guidance_rescale=0.3),
    }


def _run(pipe, kwargs: dict, seed: int) -> torch.Tensor:
    return pipe(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="pt", output="images")


@pytest.mark.parametrize("scheduler", ["pndm", "dpm"])
def test_concurrent_calls_equal_sequential(pipe, scheduler):
    if scheduler == "dpm":  # multistep solver history lives in the scheduler
        models = {n: c for n, c in pipe.components.items() if n not in ("scheduler", "guider") and c is not None}
        dpm = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe = ModularPipeline.from_pretrained(pipe._pretrained_model_name_or_path)
        pipe.update_components(**models, scheduler=dpm)
        pipe.set_progress_bar_config(disable=True)
    cases = _cases()
    if scheduler == "dpm":
        cases = {k: v for k, v in cases.items() if k in ("text2img-cfg", "img2img-cfg", "inpaint-nocfg")}
    jobs = [(name, seed) for seed in (0, 1) for name in cases][:6]
    expected = {(name, seed): _run(pipe, cases[name], seed) for name, seed in jobs}
    assert len({round(float(v.sum()), 3) for v in expected.values()}) == len(expected)  # distinct images
    results: dict = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        try:
            start.wait()
            order = jobs[index::4] + jobs[(index + 1) % 4::4]  # each job runs twice, on different threads
            for name, seed in order:
                results.setdefault((name, seed), []).append(_run(pipe, cases[name], seed))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == sorted(expected)
    for key, outputs in results.items():
        assert len(outputs) == 2
        for out in outputs:
            assert torch.equal(out, expected[key]), f"{key}: a concurrent call differs from the sequential one"


def test_shared_scheduler_state_after_call_is_the_last_calls(pipe):
    """A lone call uses the shared scheduler itself: pipe.scheduler shows its schedule afterwards."""
    _run(pipe, _cases()["text2img-cfg"], 0)
    seen = []
    def callback(pipe, step, timestep, kwargs):
        seen.append(int(step))
        return {}

    pipe(**_cases()["text2img-nocfg"], callback_on_step_end=callback, output="images")
    assert seen == list(range(len(pipe.scheduler.timesteps)))
    assert pipe.scheduler.num_inference_steps == 4


def test_state_passed_back(pipe):
    """A returned state passed back as is: a clear error saying what to do; a state with the values to reuse
    (the prompt embeddings) gives the same image as the prompt."""
    kwargs = dict(prompt="a red cat", num_inference_steps=3, height=32, width=32)
    state = pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="pt")
    first = state.get("images")
    with pytest.raises(BlockInputError) as info:
        pipe(state=state, **kwargs, generator=torch.Generator().manual_seed(0), output_type="pt")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "prompt_embeds" in notes and "PipelineState(" in notes and "without state=" in notes
    assert torch.equal(state.get("images"), first)  # the passed state is not modified
    reuse = PipelineState({k: state.get(k) for k in ("prompt_embeds", "negative_prompt_embeds")})
    again = pipe(state=reuse, num_inference_steps=3, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0), output="images")
    assert torch.equal(again, first)


# -- save_pretrained -> from_pretrained in a fresh process ----------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, sys, torch
    from diffblocks import ModularPipeline
    torch.set_num_threads(int(sys.argv[1]))  # as the parent: same float rounding
    for folder in sys.argv[2:]:
        pipe = ModularPipeline.from_pretrained(folder)
        pipe.load_components()
        pipe.set_progress_bar_config(disable=True)
        kwargs = torch.load(folder + "/kwargs.pt", weights_only=True)
        torch.save(pipe(**kwargs, output="images", generator=torch.Generator().manual_seed(0)), folder + "/out.pt")
        print(json.dumps([type(pipe.blocks).__name__, list(pipe.blocks.sub_blocks)]))
""")


def _call_kwargs(name: str, sd_pipe) -> dict:
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="pt")
    if name != "edited":
        return {**kwargs, "prompt": "a cat"}
    embeds = sd_pipe(prompt="a cat", negative_prompt="", output=["prompt_embeds", "negative_prompt_embeds"],
                     num_inference_steps=1, height=32, width=32)
    return {**kwargs, **embeds}


def test_saved_presets_load_in_fresh_process(pipe, tmp_path):
    """SD, SDXL, Flux presets and an edited preset: saved here, loaded and run in a new interpreter (which has
    imported no preset module), same images."""
    from fixtures_flux import build_flux
    from fixtures_sd import build_sdxl

    from diffblocks.presets.sd import StableDiffusionAutoBlocks

    edited = StableDiffusionAutoBlocks().get_workflow("text2image")  # a different tree, written as a structure
    edited.sub_blocks.pop("text_encoder")  # edited: runs on given prompt embeddings
    pipelines = {"sd": pipe, "sdxl": ModularPipeline.from_pretrained(build_sdxl(tmp_path)),
                 "flux": ModularPipeline.from_pretrained(build_flux(tmp_path)),
                 "edited": edited.init_pipeline(pipe._pretrained_model_name_or_path)}
    expected = {}
    for name, p in pipelines.items():
        p.load_components()
        p.set_progress_bar_config(disable=True)
        expected[name] = p(**_call_kwargs(name, pipe), output="images", generator=torch.Generator().manual_seed(0))
        p.save_pretrained(tmp_path / f"saved-{name}")
        torch.save(_call_kwargs(name, pipe), tmp_path / f"saved-{name}" / "kwargs.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    folders = [str(tmp_path / f"saved-{name}") for name in pipelines]
    result = subprocess.run([sys.executable, "-c", _CHILD, str(torch.get_num_threads()), *folders], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
    assert [p[0] for p in printed] == ["StableDiffusionAutoBlocks", "StableDiffusionXLAutoBlocks", "FluxAutoBlocks",
                                       "SequentialPipelineBlocks"]
    assert printed[3][1] == list(edited.sub_blocks)  # the edited structure, in order
    for name, folder in zip(pipelines, folders):
        got = torch.load(Path(folder) / "out.pt", weights_only=True)
        assert torch.equal(got, expected[name]), name


def test_fp16_vae_upcast_is_taken_in_turns():
    """An fp16 VAE with force_upcast is upcast for a decode by changing the shared module: concurrent calls must
    not see it restored to fp16 mid-decode (or upcast twice)."""
    from diffblocks import AutoencoderKL
    from diffblocks.presets.common.utils import vae_upcast

    vae = AutoencoderKL.from_config({"block_out_channels": [8], "norm_num_groups": 4, "force_upcast": True,
                                     "down_block_types": ["DownEncoderBlock2D"],
                                     "up_block_types": ["UpDecoderBlock2D"]}).to(torch.float16)
    inside, release = threading.Event(), threading.Event()
    seen: list = []

    def first():
        with vae_upcast(vae) as upcast:
            seen.append(("first", upcast, vae.dtype))
            inside.set()
            release.wait(5)
            seen.append(("first-end", vae.dtype))

    def second():
        inside.wait(5)
        with vae_upcast(vae) as upcast:
            seen.append(("second", upcast, vae.dtype))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    threads[1].join(0.3)
    assert threads[1].is_alive()  # waiting for the first to finish
    release.set()
    for t in threads:
        t.join(5)
    assert seen == [("first", True, torch.float32), ("first-end", torch.float32), ("second", True, torch.float32)]
    assert vae.dtype == torch.float16


def test_tokenization_is_not_disturbed_by_a_concurrent_tokenize():
    """The fast tokenizers keep padding/truncation settings on the shared backend and `tokenize()` resets them:
    without the per-tokenizer lock (components/tokenization.py) a padded encode running beside textual-inversion
    prompt expansion sometimes got unpadded ids (different embeddings, a different image; ~1% of calls here)."""
    from types import SimpleNamespace

    from transformers import CLIPTokenizer

    from diffblocks import demo_model_path
    from diffblocks.components.adapters.textual_inversion import expand_prompts
    from diffblocks.presets.sd import encode_clip

    tokenizer = CLIPTokenizer.from_pretrained(str(demo_model_path() / "tokenizer"))
    assert tokenizer.added_tokens_encoder  # so expand_prompts tokenizes

    class IdsEncoder(torch.nn.Module):  # returns the ids it is given, as "embeddings"
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace()

        def forward(self, ids, attention_mask=None, output_hidden_states=False):
            return (ids.float(),)

    encoder, lengths, done = IdsEncoder(), [], threading.Event()

    def encode():
        try:
            for _ in range(3000):
                lengths.append(encode_clip(tokenizer, encoder, ["a red circle"]).shape[-1])
        finally:
            done.set()

    def expand():
        while not done.is_set():
            expand_prompts(tokenizer, ["a blue square on a white background"])

    threads = [threading.Thread(target=encode), threading.Thread(target=expand)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(lengths) == 3000 and set(lengths) == {tokenizer.model_max_length}
