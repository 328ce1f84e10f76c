"""Ports are resolved once: running a pipeline (and each loop step) never re-reads what blocks declare."""

from diffblocks.blocks import (
    AutoPipelineBlocks,
    InputParam,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)

PORT_READS: dict[str, int] = {"inputs": 0, "intermediate_outputs": 0}


class Counted(ModularPipelineBlocks):
    """Counts every read of its declared ports."""

    src = "a"
    dst = "b"

    @property
    def inputs(self):
        PORT_READS["inputs"] += 1
        return [InputParam(self.src, required=True, type_hint=int)]

    @property
    def intermediate_outputs(self):
        PORT_READS["intermediate_outputs"] += 1
        return [OutputParam(self.dst)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        setattr(bs, self.dst, getattr(bs, self.src) + 1)
        self.set_block_state(state, bs)
        return components, state


class AtoB(Counted):
    src, dst = "a", "b"


class BtoC(Counted):
    src, dst = "b", "c"


class CtoD(Counted):
    src, dst = "c", "d"


class LoopBody(ModularPipelineBlocks):
    @property
    def inputs(self):
        PORT_READS["inputs"] += 1
        return [InputParam("d")]

    @property
    def intermediate_outputs(self):
        PORT_READS["intermediate_outputs"] += 1
        return [OutputParam("d")]

    def __call__(self, components, block_state, i):
        block_state.d += i
        return components, block_state


class Loop(LoopSequentialPipelineBlocks):
    @property
    def loop_inputs(self):
        return [InputParam("num_steps", required=True)]

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        for i in range(block_state.num_steps):
            components, block_state = self.loop_step(components, block_state, i=i)
        self.set_block_state(state, block_state)
        return components, state


class Pick(AutoPipelineBlocks):
    block_classes = [BtoC, BtoC]
    block_names = ["flagged", "default"]
    block_trigger_inputs = ["flag", None]


def _tree() -> SequentialPipelineBlocks:
    return SequentialPipelineBlocks.from_blocks_dict({
        "first": AtoB,
        "middle": SequentialPipelineBlocks.from_blocks_dict({"pick": Pick, "to_d": CtoD}),
        "loop": Loop.from_blocks_dict({"body": LoopBody}),
    })


def test_composite_io_is_one_cached_object():
    tree = _tree()
    first = tree._io()
    assert tree._io() is first
    assert tree.sub_blocks["middle"]._io() is tree.sub_blocks["middle"]._io()
    assert tree.input_names == ["a", "flag", "num_steps"]


def test_pipeline_calls_and_loop_steps_do_not_reread_ports():
    pipe = _tree().init_pipeline()
    assert pipe(a=1, num_steps=4, output="d") == 4 + (0 + 1 + 2 + 3)  # warm: ports may be resolved here
    before = dict(PORT_READS)
    for steps in range(10):
        assert pipe(a=1, num_steps=steps, flag=True, output="d") == 4 + steps * (steps - 1) // 2
    assert before == PORT_READS


def test_structure_edit_invalidates_the_cache():
    tree = _tree()
    old = tree._io()
    reads = PORT_READS["inputs"]
    tree.sub_blocks["middle"].sub_blocks.insert("again", AtoB, 0)
    new = tree._io()
    assert new is not old
    assert PORT_READS["inputs"] > reads  # the new leaf's ports were read
    assert [name for name, _ in new.children] == ["first", "middle", "loop"]
    assert [name for name, _ in tree.sub_blocks["middle"]._io().children] == ["again", "pick", "to_d"]
