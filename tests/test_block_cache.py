"""Block output cache: unchanged blocks are not re-run across calls, and cached results equal uncached ones."""

from __future__ import annotations

import pytest
import torch
from fixtures_sd import build_sd15, test_image

from diffblocks import (
    ClassifierFreeGuidance,
    InputParam,
    ModularPipeline,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)

KW = {"num_inference_steps": 2, "height": 32, "width": 32, "output": "images", "output_type": "pt"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("cache"))


def _load(folder) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _Watch:
    """Counts text-encoder forwards and records which leaf blocks ran (not from the cache) in the last call."""

    def __init__(self, pipe: ModularPipeline) -> None:
        self.encoder_calls = 0
        self.ran: list[str] = []
        self.cached: list[str] = []
        self.hook = pipe.text_encoder.register_forward_hook(self._count)
        pipe.add_progress_handler(self._event)

    def _count(self, *_):
        self.encoder_calls += 1

    def _event(self, event):
        if event.kind == "block_end" and event.cached is not None:  # blocks the cache looked up
            (self.cached if event.cached else self.ran).append(event.path.rsplit(".", 1)[-1])

    def reset(self):
        self.encoder_calls, self.ran, self.cached = 0, [], []


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_seed_only_change_skips_the_text_encoder_and_matches_uncached(folder):
    pipe = _load(folder)
    plain = _load(folder)
    pipe.enable_block_cache()
    watch = _Watch(pipe)
    first = pipe(prompt="a red cat", negative_prompt="ugly", generator=_gen(0), **KW)
    assert watch.encoder_calls == 2  # prompt and negative prompt
    watch.reset()
    second = pipe(prompt="a red cat", negative_prompt="ugly", generator=_gen(1), **KW)
    assert watch.encoder_calls == 0
    assert watch.cached == ["text_encoder"]
    assert torch.equal(second, plain(prompt="a red cat", negative_prompt="ugly", generator=_gen(1), **KW))
    assert torch.equal(first, plain(prompt="a red cat", negative_prompt="ugly", generator=_gen(0), **KW))
    info = pipe.block_cache_info()
    assert info.hits >= 1 and info.misses >= 2 and info.bytes > 0 and info.entries >= 2


def test_changes_rerun_exactly_the_affected_blocks(folder):
    pipe = _load(folder)
    pipe.enable_block_cache()
    watch = _Watch(pipe)
    pipe(prompt="a red cat", generator=_gen(0), **KW)

    def rerun(**kwargs) -> list[str]:
        watch.reset()
        pipe(**{"prompt": "a red cat", "generator": _gen(0), **kwargs}, **KW)
        return watch.ran

    # nothing changed: every cacheable block hits (decode too: same seed, same latents)
    assert rerun() == [] and watch.cached == ["text_encoder", "decode"]
    # a new prompt re-encodes, and decodes the new latents
    assert rerun(prompt="a blue dog") == ["text_encoder", "decode"] and watch.encoder_calls == 2
    rerun()
    # a guider with another config
    pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=3.0))
    assert rerun() == ["text_encoder", "decode"]  # the guider changes the latents too
    assert rerun() == []
    # swapping the text encoder (a copy with the same weights is another model) re-runs it, and only it before
    # the denoise loop
    import copy

    encoder = copy.deepcopy(pipe.text_encoder)
    encoder._forward_hooks.clear()
    pipe.update_components(text_encoder=encoder)
    assert rerun() == ["text_encoder"]  # same embeddings, same latents: decode still hits
    assert rerun() == []
    # an in-place weight edit (as a weight load or fuse does) invalidates
    with torch.no_grad():
        next(encoder.parameters()).mul_(1.0)
    assert rerun() == ["text_encoder"]


def test_lora_load_and_scale_invalidate(folder):
    peft = pytest.importorskip("peft")
    pipe = _load(folder)
    pipe.enable_block_cache()
    watch = _Watch(pipe)
    pipe(prompt="a red cat", generator=_gen(0), **KW)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.inject_adapter_in_model(config, pipe.text_encoder, adapter_name="style")
    watch.reset()
    with_lora = pipe(prompt="a red cat", generator=_gen(0), **KW)
    assert watch.encoder_calls == 2  # prompt and the empty negative prompt
    lora_layers = [m for m in pipe.text_encoder.modules() if hasattr(m, "lora_A") and hasattr(m, "scaling")]
    for layer in lora_layers:
        layer.scaling["style"] = 0.0  # what set_adapters(weights) does
    watch.reset()
    scaled = pipe(prompt="a red cat", generator=_gen(0), **KW)
    assert watch.encoder_calls == 2  # prompt and the empty negative prompt
    assert not torch.equal(with_lora, scaled)


def test_max_memory_is_respected_under_a_stream_of_prompts(folder):
    pipe = _load(folder)
    cache = pipe.enable_block_cache(max_memory="40KB")
    sizes = []
    for i in range(6):
        pipe(prompt=f"prompt number {i}", generator=_gen(0), **dict(KW, num_inference_steps=1))
        sizes.append(cache.info().bytes)
        assert cache.info().bytes <= 40_000
    assert cache.info().entries < 6 * 2  # evicted
    watch = _Watch(pipe)
    pipe(prompt="prompt number 0", generator=_gen(0), **KW)  # least recently used: evicted, re-encoded
    assert watch.encoder_calls >= 1
    watch.reset()
    pipe(prompt="prompt number 0", generator=_gen(0), **KW)
    assert watch.encoder_calls == 0
    with pytest.raises(ValueError):
        pipe.enable_block_cache(max_memory="lots")
    pipe.disable_block_cache()
    with pytest.raises(RuntimeError, match="enable_block_cache"):
        pipe.block_cache_info()


def _count_vae_encodes(pipe) -> list[int]:
    calls = [0]
    pipe.vae.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def inpaint_folder(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("cache-inpaint"), inpaint=True)


@pytest.mark.parametrize("case", ["img2img", "inpaint-4ch", "inpaint-9ch"])
def test_img2img_and_inpaint_same_image_new_seed_reuse_the_vae_encode(folder, inpaint_folder, case):
    path = inpaint_folder if case == "inpaint-9ch" else folder
    pipe, plain = _load(path), _load(path)
    pipe.enable_block_cache()
    kw = dict(prompt="a red cat", image=test_image(32), strength=0.6, **KW)
    if case != "img2img":
        kw["mask_image"] = test_image(32, mode="L")
    encodes = _count_vae_encodes(pipe)
    paths: list[tuple[str, bool]] = []
    pipe.add_progress_handler(lambda e: paths.append((e.path, e.cached))
                              if e.kind == "block_end" and e.cached is not None else None)
    pipe(**kw, generator=_gen(0))
    first_encodes = encodes[0]
    assert first_encodes == (1 if case == "img2img" else 2)  # inpainting: the image and the masked image
    paths.clear()
    hits = pipe.block_cache_info().hits
    got = pipe(**dict(kw, image=test_image(32)), generator=_gen(1))  # same content, a new PIL object
    # the VAE encode (preprocessing + posterior) comes from the cache; the seeded sampling and the noised
    # latents run again
    assert encodes[0] == first_encodes
    encode = ".vae_encoder.img2img.encode" if case == "img2img" else ".prepare_latents.inpaint.encode"
    assert [c for p, c in paths if p.endswith(encode)] == [True]
    assert pipe.block_cache_info().hits > hits
    assert not any(c for p, c in paths if "sample" in p or "prepare_latents" in p and not p.endswith(encode))
    assert torch.equal(got, plain(**kw, generator=_gen(1)))
    assert not torch.equal(got, plain(**kw, generator=_gen(0)))  # the seed still changes the noised latents


# -- the cache on plain blocks: aliasing, randomness, opt-out ----------------------------------------------------------
RUNS: dict[str, int] = {}


class Produce(ModularPipelineBlocks):
    inputs = property(lambda self: [InputParam("x", torch.Tensor, required=True)])
    intermediate_outputs = property(lambda self: [OutputParam("y", torch.Tensor)])

    def __call__(self, components, state):
        RUNS[type(self).__name__] = RUNS.get(type(self).__name__, 0) + 1
        bs = self.get_block_state(state)
        bs.y = bs.x * 2
        self.set_block_state(state, bs)
        return components, state


class MutateInPlace(ModularPipelineBlocks):
    inputs = property(lambda self: [InputParam("y", torch.Tensor, required=True)])
    intermediate_outputs = property(lambda self: [OutputParam("z", torch.Tensor)])

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.y.add_(1)  # modifies its input in place
        bs.z = bs.y
        self.set_block_state(state, bs)
        return components, state


class Noisy(Produce):
    inputs = property(lambda self: [InputParam("x", torch.Tensor, required=True), InputParam("generator")])


class NotCacheable(Produce):
    cacheable = False


def test_cached_tensors_are_never_handed_out_after_in_place_changes():
    RUNS.clear()
    pipe = SequentialPipelineBlocks.from_blocks_dict({"produce": Produce, "mutate": MutateInPlace}).init_pipeline()
    pipe.enable_block_cache()
    x = torch.ones(3)
    first = pipe(x=x, output="z").clone()
    second = pipe(x=x, output="z")
    assert torch.equal(first, second) and torch.equal(second, torch.full((3,), 3.0))
    assert RUNS["Produce"] == 2  # its cached output was changed in place downstream: not reused
    # without the mutation the output is reused, and a caller editing a returned tensor does not poison it
    RUNS.clear()
    pipe = SequentialPipelineBlocks.from_blocks_dict({"produce": Produce}).init_pipeline()
    pipe.enable_block_cache()
    y = pipe(x=x, output="y")
    y.mul_(100)
    assert torch.equal(pipe(x=x, output="y"), torch.full((3,), 2.0))
    assert torch.equal(pipe(x=torch.ones(3), output="y"), torch.full((3,), 2.0))  # same content, new tensor
    assert RUNS["Produce"] == 2 and pipe.block_cache_info().hits == 1


@pytest.mark.parametrize("block", [Noisy, NotCacheable])
def test_random_and_opted_out_blocks_never_hit(block):
    RUNS.clear()
    pipe = SequentialPipelineBlocks.from_blocks_dict({"b": block}).init_pipeline()
    pipe.enable_block_cache()
    for _ in range(3):
        pipe(x=torch.ones(2), output="y")
    assert RUNS[block.__name__] == 3 and pipe.block_cache_info().hits == 0


def test_inputs_without_a_fingerprint_run_uncached():
    RUNS.clear()

    class TakesObject(Produce):
        inputs = property(lambda self: [InputParam("x", torch.Tensor, required=True), InputParam("fn")])

    pipe = SequentialPipelineBlocks.from_blocks_dict({"b": TakesObject}).init_pipeline()
    pipe.enable_block_cache()
    for _ in range(2):
        pipe(x=torch.ones(2), fn=print, output="y")
    assert RUNS["TakesObject"] == 2 and pipe.block_cache_info().uncached == 2


def test_sampling_step_alone_names_what_it_needs():
    from diffblocks import BlockInputError
    from diffblocks.presets.common import SampleImageLatentsStep

    pipe = SequentialPipelineBlocks.from_blocks_dict({"sample": SampleImageLatentsStep}).init_pipeline()
    with pytest.raises(BlockInputError, match=r"SampleImageLatentsStep.*image_posterior.*image_latents") as info:
        pipe(output="image_latents")
    assert info.value.input_name == "image_posterior"
