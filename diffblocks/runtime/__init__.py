"""How blocks run: ModularPipeline and the Hub format of modular repos."""

from ..blocks.backend import register_backend
from .pipeline import ComponentLoadError, ModularPipeline
from .serialization import TrustRemoteCodeError, load_blocks, save_blocks

# the blocks' init_pipeline / from_pretrained / save_pretrained run through this (blocks never import runtime)
register_backend(init_pipeline=ModularPipeline, load_blocks=load_blocks, save_blocks=save_blocks,
                 run_block=lambda pipe, block, state: pipe._run_block(block, state))

__all__ = ["ComponentLoadError", "ModularPipeline", "TrustRemoteCodeError"]
