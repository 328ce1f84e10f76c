"""Port-table caches are per block tree: an edit drops the caches of its own tree only; `pipe.blocks` is cheap."""

from __future__ import annotations

import time

import torch

from diffblocks import (
    InputParam,
    InsertableDict,
    LoopSequentialPipelineBlocks,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)


def _leaf(src: str, dst: str, k: int = 1) -> type:
    class Leaf(ModularPipelineBlocks):
        inputs = property(lambda self: [InputParam(src, required=True)])
        intermediate_outputs = property(lambda self: [OutputParam(dst)])

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            setattr(bs, dst, getattr(bs, src) * k)
            self.set_block_state(state, bs)
            return components, state

    Leaf.__name__ = f"Leaf_{src}_{dst}_{k}"
    return Leaf


def _loop_leaf(k: int) -> type:
    class Step(ModularPipelineBlocks):
        inputs = property(lambda self: [InputParam("x")])
        intermediate_outputs = property(lambda self: [OutputParam("x")])

        def __call__(self, components, block_state, i):
            block_state.x = block_state.x + k
            return components, block_state

    return Step


class Loop(LoopSequentialPipelineBlocks):
    block_classes = [_loop_leaf(1)]
    block_names = ["add"]
    loop_inputs = property(lambda self: [InputParam("n", required=True)])

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        for i in range(bs.n):
            components, bs = self.loop_step(components, bs, i=i)
        self.set_block_state(state, bs)
        return components, state


def _tree():
    inner = SequentialPipelineBlocks.from_blocks_dict({"b": _leaf("a", "b"), "c": _leaf("b", "c")})
    return SequentialPipelineBlocks.from_blocks_dict({"inner": inner, "d": _leaf("c", "d")})


def test_an_edit_drops_its_own_tree_caches_only():
    tree, other = _tree(), _tree()
    tree_io, other_io = tree._io(), other._io()
    tree.sub_blocks["inner"].sub_blocks.pop("b")  # nested edit: c now needs b from outside
    assert "b" in tree.input_names and "a" not in tree.input_names
    assert tree._io() is not tree_io
    assert other._io() is other_io  # the other tree kept its port table
    presets = InsertableDict([("x", _leaf("a", "b"))])
    presets.insert("y", _leaf("b", "c"), 0)  # a preset dict edit touches no built tree
    assert other._io() is other_io
    # a block shared by two trees: an edit below it drops both trees' caches
    shared = SequentialPipelineBlocks.from_blocks_dict({"b": _leaf("a", "b")})
    one = SequentialPipelineBlocks.from_blocks_dict({"s": shared})
    two = SequentialPipelineBlocks.from_blocks_dict({"s": shared})
    one_io, two_io = one._io(), two._io()
    shared.sub_blocks.insert("pre", _leaf("z", "a"), 0)
    assert one.input_names == ["z"] and two.input_names == ["z"]
    assert one._io() is not one_io and two._io() is not two_io
    # removed children no longer report edits to their old parent
    removed = one.sub_blocks.pop("s")
    again = one._io()
    removed.sub_blocks.pop("pre")
    assert one._io() is again


def test_loop_step_follows_an_edit_of_its_sub_blocks():
    loop = Loop()
    pipe = loop.init_pipeline()
    assert pipe(n=3, x=0, output="x") == 3
    pipe._blocks.sub_blocks["add"] = _loop_leaf(10)
    assert pipe(n=3, x=0, output="x") == 30
    pipe._blocks.sub_blocks.insert("twice", _loop_leaf(100), 0)
    assert pipe(n=2, x=0, output="x") == 220


def test_pipe_blocks_is_a_cheap_private_copy():
    tree = _tree()
    pipe = tree.init_pipeline()
    first = pipe.blocks
    root_io = pipe._blocks._io()
    start = time.perf_counter()
    for _ in range(200):
        again = pipe.blocks
    per_read = (time.perf_counter() - start) / 200
    assert again is first and per_read < 1e-3  # no deep copy per read
    assert pipe._blocks._io() is root_io  # reading did not drop the pipeline's caches
    first.sub_blocks.pop("d")  # editing the copy: the pipeline is untouched, the next read is a fresh copy
    assert "d" in pipe._blocks.sub_blocks and pipe._blocks._io() is root_io
    fresh = pipe.blocks
    assert fresh is not first and "d" in fresh.sub_blocks
    assert pipe(a=torch.tensor(2.0), output="d") == 2.0
