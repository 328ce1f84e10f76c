"""The block algebra: what a step is and how steps compose. Pure Python; no model code."""

from .auto import AutoPipelineBlocks
from .base import ComponentsNamespace, ModularPipelineBlocks
from .errors import BlockGraphError, BlockInputError, ComponentNotLoadedError
from .graph import Problem
from .insertable_dict import InsertableDict
from .loop import LoopSequentialPipelineBlocks
from .params import ConfigSpec, InputParam, OutputParam
from .sequential import SequentialPipelineBlocks
from .state import BlockState, PipelineState
from .trace import Tracer

__all__ = [
    "AutoPipelineBlocks",
    "BlockGraphError",
    "BlockInputError",
    "BlockState",
    "ComponentNotLoadedError",
    "ComponentsNamespace",
    "ConfigSpec",
    "InputParam",
    "InsertableDict",
    "LoopSequentialPipelineBlocks",
    "ModularPipelineBlocks",
    "OutputParam",
    "PipelineState",
    "Problem",
    "SequentialPipelineBlocks",
    "Tracer",
]
