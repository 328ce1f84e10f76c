"""Composite ports, caching, selection, state I/O and the errors users see."""

import pytest

from diffblocks import (
    AutoPipelineBlocks,
    BlockGraphError,
    BlockInputError,
    ComponentNotLoadedError,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    PipelineState,
    SequentialPipelineBlocks,
)


def leaf(name, inputs=(), outputs=(), fn=None, components=()):
    """A leaf block class: inputs are InputParams, outputs names; fn(block_state) computes."""

    def call(self, comps, state):
        bs = self.get_block_state(state)
        if fn is not None:
            fn(bs)
        self.set_block_state(state, bs)
        return comps, state

    return type(name, (ModularPipelineBlocks,), {
        "inputs": property(lambda self: list(inputs)),
        "intermediate_outputs": property(lambda self: [OutputParam(o) if isinstance(o, str) else o for o in outputs]),
        "expected_components": property(lambda self: list(components)),
        "description": property(lambda self: f"{name} block"),
        "__call__": call,
    })


def set_(**values):
    return lambda bs: [setattr(bs, k, v(bs) if callable(v) else v) for k, v in values.items()]


A = leaf("A", [InputParam("prompt", str, required=True), InputParam("steps", int, default=10)], ["embeds"],
         set_(embeds=lambda bs: bs.prompt.upper()))
B = leaf("B", [InputParam("embeds", required=True), InputParam("steps", int, default=25)], ["latents"],
         set_(latents=lambda bs: f"{bs.embeds}/{bs.steps}"))


def test_sequential_inputs_exclude_upstream_outputs_and_required_follows():
    seq = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B})
    assert seq.input_names == ["prompt", "steps"]
    assert seq.required_inputs == ["prompt"]  # embeds is produced upstream
    assert seq.intermediate_output_names == ["embeds", "latents"]


def test_conflicting_defaults_each_block_applies_its_own_and_doc_says_so():
    seq = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B})
    steps = next(p for p in seq.inputs if p.name == "steps")
    assert steps.metadata["defaults_by_block"] == {"a": 10, "b": 25}
    assert "defaults to 10 (a) or 25 (b)" in seq.doc
    pipe = seq.init_pipeline()
    assert pipe(prompt="hi", output="latents") == "HI/25"
    assert pipe(prompt="hi", steps=3, output="latents") == "HI/3"


def test_skippable_producer_keeps_input_public_and_optional():
    Maybe = type("Maybe", (AutoPipelineBlocks,), {
        "block_classes": [leaf("Enc", [InputParam("image", required=True)], ["embeds"], set_(embeds="img"))],
        "block_names": ["enc"], "block_trigger_inputs": ["image"]})
    seq = SequentialPipelineBlocks.from_blocks_dict({"maybe": Maybe, "b": B})
    assert Maybe().is_skippable
    assert "embeds" in seq.input_names and "embeds" not in seq.required_inputs
    pipe = seq.init_pipeline()
    assert pipe(image="x", output="latents") == "img/25"
    assert pipe(embeds="given", output="latents") == "given/25"


def test_auto_required_inputs_are_the_intersection_with_a_default():
    X = leaf("X", [InputParam("p", required=True), InputParam("image", required=True)], ["out"], set_(out="x"))
    Y = leaf("Y", [InputParam("p", required=True)], ["out"], set_(out="y"))
    Auto = type("Auto", (AutoPipelineBlocks,), {"block_classes": [X, Y], "block_names": ["x", "y"],
                                                "block_trigger_inputs": ["image", None]})
    assert Auto().required_inputs == ["p"]
    NoDefault = type("NoDefault", (AutoPipelineBlocks,), {"block_classes": [X], "block_names": ["x"],
                                                          "block_trigger_inputs": ["image"]})
    assert NoDefault().required_inputs == []
    assert NoDefault().init_pipeline()(p=1).values.get("out") is None  # skipped: not an error


def test_nested_auto_and_execution_blocks_flatten_with_dotted_names():
    Enc = leaf("Enc", [InputParam("image")], ["image_latents"], set_(image_latents="L"))
    VaeEnc = type("VaeEnc", (AutoPipelineBlocks,), {"block_classes": [Enc], "block_names": ["img2img"],
                                                    "block_trigger_inputs": ["image"]})
    I2I = leaf("I2I", [InputParam("image_latents", required=True)], ["latents"], set_(latents="from-image"))
    T2I = leaf("T2I", [], ["latents"], set_(latents="noise"))
    Prep = type("Prep", (AutoPipelineBlocks,), {"block_classes": [I2I, T2I], "block_names": ["img2img", "text2img"],
                                                "block_trigger_inputs": ["image_latents", None]})
    Inner = type("Inner", (SequentialPipelineBlocks,), {"block_classes": [Prep], "block_names": ["prepare"]})
    top = SequentialPipelineBlocks.from_blocks_dict({"vae_encoder": VaeEnc, "denoise": Inner})
    assert set(top.trigger_inputs) == {"image", "image_latents"}
    i2i = top.get_execution_blocks("image")  # image -> encoder runs -> its output triggers img2img
    assert list(i2i.sub_blocks) == ["vae_encoder", "denoise.prepare"]
    assert isinstance(i2i.sub_blocks["denoise.prepare"], I2I)
    t2i = top.get_execution_blocks()
    assert list(t2i.sub_blocks) == ["denoise.prepare"] and isinstance(t2i.sub_blocks["denoise.prepare"], T2I)
    pipe = top.init_pipeline()
    assert pipe(image="x", output="latents") == "from-image"
    assert pipe(output="latents") == "noise"


def test_workflows_resolve_to_pruned_blocks():
    X = leaf("X", [InputParam("image")], ["out"], set_(out="x"))
    Y = leaf("Y", [], ["out"], set_(out="y"))
    Auto = type("Auto", (AutoPipelineBlocks,), {"block_classes": [X, Y], "block_names": ["i2i", "t2i"],
                                                "block_trigger_inputs": ["image", None],
                                                "workflow_map": {"image2image": {"image": True}, "text2image": {}}})
    auto = Auto()
    assert auto.available_workflows == ["image2image", "text2image"]
    assert isinstance(auto.get_workflow("image2image"), X) and isinstance(auto.get_workflow("text2image"), Y)
    assert "`image2image`: requires `image`" in auto.doc
    with pytest.raises(KeyError, match="available"):
        auto.get_workflow("inpaint")


def test_composite_io_is_cached_and_invalidated_by_nested_edits():
    inner = SequentialPipelineBlocks.from_blocks_dict({"a": A})
    top = SequentialPipelineBlocks.from_blocks_dict({"inner": inner, "b": B})
    first = top._io()
    assert top._io() is first  # resolved once
    top.sub_blocks["inner"].sub_blocks["extra"] = leaf("E", [], ["extra_out"], set_(extra_out=1))
    assert top._io() is not first
    assert "extra_out" in top.intermediate_output_names


def test_block_runs_alone_with_components_dict():
    Scale = leaf("Scale", [InputParam("x", int, required=True)], ["y"], None, [])

    def call(self, comps, state):
        bs = self.get_block_state(state)
        bs.y = bs.x * comps.factor
        self.set_block_state(state, bs)
        return comps, state

    Scale.__call__ = call
    assert Scale().run({"factor": 3}, x=2) == {"y": 6}
    with pytest.raises(ComponentNotLoadedError, match="factor"):
        Scale().run(None, x=2)


def test_state_reprs_and_access():
    import torch

    state = PipelineState()
    state.set("latents", torch.zeros(2, 4, 8, 8), kwargs_type="denoiser_input_fields")
    state.set("prompt", "hi")
    assert "Tensor(dtype=torch.float32, shape=(2, 4, 8, 8))" in repr(state)
    assert state.get(["prompt", "missing"]) == {"prompt": "hi", "missing": None}
    assert list(state.get_by_kwargs("denoiser_input_fields")) == ["latents"]
    assert state.prompt == "hi"
    with pytest.raises(AttributeError, match="holds"):
        _ = state.nope


def test_kwargs_group_inputs_collect_tagged_values():
    Producer = leaf("Producer", [], [OutputParam("pe", kwargs_type="denoiser_input_fields"),
                                     OutputParam("te", kwargs_type="denoiser_input_fields")], set_(pe=1, te=2))
    Consumer = leaf("Consumer", [InputParam(kwargs_type="denoiser_input_fields")], ["total"],
                    set_(total=lambda bs: sum(bs.denoiser_input_fields.values())))
    pipe = SequentialPipelineBlocks.from_blocks_dict({"p": Producer, "c": Consumer}).init_pipeline()
    assert pipe(output="total") == 3


# --- errors ---------------------------------------------------------------------------------------------
def test_unknown_input_names_valid_ones_and_suggests():
    pipe = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B}).init_pipeline()
    with pytest.raises(BlockInputError) as err:
        pipe(prompt="x", stpes=3)
    assert "'stpes'" in str(err.value) and "did you mean 'steps'" in str(err.value) and "'prompt'" in str(err.value)


def test_missing_required_input_names_block():
    pipe = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B}).init_pipeline()
    with pytest.raises(BlockInputError, match=r"missing required input\(s\): 'prompt' \(needed by .*a\)"):
        pipe(steps=3)


def test_wrong_type_names_block_input_expected_and_got():
    pipe = SequentialPipelineBlocks.from_blocks_dict({"a": A, "b": B}).init_pipeline()
    with pytest.raises(BlockInputError) as err:
        pipe(prompt=["x"], steps=3)
    message = str(err.value)
    assert "'prompt'" in message and "expects str" in message and "got list" in message and ".a" in message
    assert err.value.input_name == "prompt"
    assert pipe(prompt="x", steps=3.0, output="latents") == "X/3"  # int-valued float accepted as int
    with pytest.raises(BlockInputError, match="expects int"):
        pipe(prompt="x", steps=2.5)


def test_union_hint_accepts_single_str_and_list():
    P = leaf("P", [InputParam("prompt", list[str] | str, required=True)], ["n"],
             set_(n=lambda bs: 1 if isinstance(bs.prompt, str) else len(bs.prompt)))
    pipe = P().init_pipeline()
    assert pipe(prompt="a", output="n") == 1 and pipe(prompt=["a", "b"], output="n") == 2
    with pytest.raises(BlockInputError, match=r"expects list\[str\] \| str"):
        pipe(prompt=[1, 2])


def test_required_missing_inside_block_and_unset_output():
    Needs = leaf("Needs", [InputParam("z", required=True)], [])
    with pytest.raises(BlockInputError, match="Block 'Needs' requires input 'z'"):
        Needs().get_block_state(PipelineState())
    Forgets = leaf("Forgets", [], ["result"])
    with pytest.raises(BlockInputError, match="declares output 'result' but did not set it"):
        Forgets().init_pipeline()()


def test_error_in_nested_block_is_located_by_path():
    def boom(bs):
        raise RuntimeError("kaboom")

    Bad = leaf("Bad", [], [], boom)
    inner = SequentialPipelineBlocks.from_blocks_dict({"bad": Bad})
    pipe = SequentialPipelineBlocks.from_blocks_dict({"a": A, "inner": inner}).init_pipeline()
    with pytest.raises(RuntimeError, match="kaboom") as err:
        pipe(prompt="x")
    assert any("inner.bad" in note for note in err.value.__notes__)


def test_malformed_composites_raise():
    with pytest.raises(ValueError, match="one entry per block class"):
        type("BadAuto", (AutoPipelineBlocks,), {"block_classes": [A], "block_names": ["a"],
                                                "block_trigger_inputs": []})()
    with pytest.raises(ValueError, match="same length"):
        type("BadSeq", (SequentialPipelineBlocks,), {"block_classes": [A], "block_names": []})()
    loop = type("L", (LoopSequentialPipelineBlocks,), {}).from_blocks_dict(
        {"inner": SequentialPipelineBlocks.from_blocks_dict({"a": A})})
    with pytest.raises(BlockGraphError, match="must be leaf blocks"):
        _ = loop.inputs
    with pytest.raises(TypeError, match="not a ModularPipelineBlocks"):
        SequentialPipelineBlocks.from_blocks_dict({"x": int})


def test_loop_step_error_names_the_failing_sub_block_and_follows_edits():
    from diffblocks import LoopSequentialPipelineBlocks

    class Count(ModularPipelineBlocks):
        @property
        def inputs(self):
            return [InputParam("n")]

        def __call__(self, comps, bs, i):
            bs.n += 1
            return comps, bs

    class Fail(ModularPipelineBlocks):
        def __call__(self, comps, bs, i):
            if i == 2:
                raise ValueError("bad step")
            return comps, bs

    class Loop(LoopSequentialPipelineBlocks):
        def __call__(self, comps, state):
            bs = self.get_block_state(state)
            for i in range(3):
                comps, bs = self.loop_step(comps, bs, i=i)
            self.set_block_state(state, bs)
            return comps, state

    loop = Loop.from_blocks_dict({"count": Count})
    pipe = loop.init_pipeline()
    assert pipe(n=0).values["n"] == 3
    loop.sub_blocks["twice"] = Count()  # the cached step plan follows edits
    assert loop.init_pipeline()(n=0).values["n"] == 6
    loop.sub_blocks["fail"] = Fail()
    with pytest.raises(ValueError, match="bad step") as err:
        loop.init_pipeline()(n=0)
    assert any("'fail'" in note for note in err.value.__notes__)


def test_copied_loop_runs_its_own_sub_blocks():
    import copy

    from diffblocks import LoopSequentialPipelineBlocks

    class Add(ModularPipelineBlocks):
        def __init__(self, amount=1):
            self.amount = amount

        @property
        def inputs(self):
            return [InputParam("n")]

        @property
        def intermediate_outputs(self):
            return [OutputParam("n")]

        def __call__(self, comps, bs, i):
            bs.n += self.amount
            return comps, bs

    class Loop(LoopSequentialPipelineBlocks):
        def __call__(self, comps, state):
            bs = self.get_block_state(state)
            for i in range(2):
                comps, bs = self.loop_step(comps, bs, i=i)
            self.set_block_state(state, bs)
            return comps, state

    loop = Loop.from_blocks_dict({"add": Add(1)})
    assert loop.run(None, n=0) == {"n": 2}  # the fast step function is now installed on `loop`
    clone = copy.deepcopy(loop)
    clone.sub_blocks["add"].amount = 10
    assert clone.run(None, n=0) == {"n": 20} and loop.run(None, n=0) == {"n": 2}


def test_reading_an_undeclared_field_explains_what_is_declared():
    Reads = leaf("Reads", [InputParam("x")], ["y"], set_(y=lambda bs: bs.typo))
    with pytest.raises(AttributeError) as err:
        Reads().run(None, x=1)
    assert any("no field 'typo'" in n and "'x'" in n for n in err.value.__notes__)
    pipe = SequentialPipelineBlocks.from_blocks_dict({"r": Reads}).init_pipeline()
    with pytest.raises(AttributeError) as err:
        pipe(x=1)
    notes = err.value.__notes__
    assert sum("no field 'typo'" in n for n in notes) == 1 and any("'r'" in n for n in notes)
