"""Single-file checkpoints: the original (LDM / BFL) layout `.safetensors` files most checkpoints ship as.

`detect` names the family and components a file holds, the `convert_*` modules map our parameter names to the
file's tensors, `load` builds one model (`Model.from_single_file`) and `pipeline` a whole ModularPipeline
(`ModularPipeline.from_single_file`). Standard configs of the published models ship in `configs/`.
"""

from .detect import FAMILIES, Detected, LoraFileError, UnknownCheckpointError, detect
from .load import model_from_single_file, shipped_config
from .reader import SingleFile

__all__ = ["FAMILIES", "Detected", "LoraFileError", "SingleFile", "UnknownCheckpointError", "detect",
           "model_from_single_file", "shipped_config"]
