"""Adapters on components: LoRA (peft; diffusers and kohya layouts), textual inversion, IP-Adapter weights.

Adapters belong to the component (the model object), not to a pipeline: a LoRA loaded on a UNet is seen by
every pipeline that shares that UNet through a ComponentsManager.
"""

from .files import AdapterFileError, load_adapter_file, read_weights
from .lora import VERSION_ATTR, adapter_version, get_lora_state_dict, lora_scale
from .lora_formats import split_lora_state_dict
from .model_mixin import LORA_WEIGHT_NAME, LoraAdapterMixin, component_prefix
from .saving import lora_state_dict, save_lora_weights

__all__ = [
    "AdapterFileError", "LORA_WEIGHT_NAME", "LoraAdapterMixin", "VERSION_ATTR", "adapter_version",
    "component_prefix", "get_lora_state_dict", "load_adapter_file", "lora_scale", "lora_state_dict",
    "read_weights", "save_lora_weights", "split_lora_state_dict",
]
