"""Training state (optimizer, LR schedule, RNG states) as safetensors + JSON: resuming reads no pickle.

`save_tree(obj, stem)` writes the tensors of a nested dict/list/tuple structure to `stem.safetensors` and the
rest (numbers, strings, the structure itself) to `stem.json`; `load_tree(stem)` rebuilds it. Only plain data
goes in and comes out: a value of any other type is refused when saving, and loading creates no objects
beyond dicts, lists, tuples, numbers, strings, tensors and numpy arrays.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_states", "load_tree", "save_tree", "set_rng_states"]

_SCALARS = (bool, int, float, str, type(None))


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj).contiguous()
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"training state {where}: a {type(obj).__name__} cannot be saved as safetensors + JSON "
                    "(only tensors, numpy arrays, numbers, strings and dicts/lists/tuples of them).")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_tree(obj: Any, stem: str | Path) -> None:
    """Write `obj` as `<stem>.json` (+ `<stem>.safetensors` when it holds tensors)."""
    from safetensors.torch import save_file

    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(obj, tensors, stem.name)
    if tensors:
        save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(encoded) + "\n")


def load_tree(stem: str | Path) -> Any:
    """Read what `save_tree` wrote (safetensors + JSON only)."""
    from safetensors.torch import load_file

    stem = Path(stem)
    tensor_file = stem.with_suffix(".safetensors")
    tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
    return _decode(json.loads(stem.with_suffix(".json").read_text()), tensors)


def get_rng_states() -> dict[str, Any]:
    """The global RNG states accelerate's save_state records: Python, numpy, torch CPU (and CUDA)."""
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
