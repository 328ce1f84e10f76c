"""Lazy access to one `.safetensors` checkpoint file: header first, then tensor by tensor (or row range).

Opening goes through the checkpoint reader of `components.state_dict` (the `safetensors` library validates the
header, dtypes and offsets, so a truncated or corrupt file is refused before any tensor is read). Tensors, or
row ranges of them, are read through its memory map one at a time into fresh storage; the map is reopened every
`_WINDOW_BYTES` of data read so the pages already converted leave the process, and a conversion never holds two
full copies of the weights.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..state_dict import _WINDOW_BYTES, CheckpointError, _open

logger = logging.getLogger(__name__)

__all__ = ["SingleFile", "resolve_single_file"]

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_URL = re.compile(r"(?:https?://)?(?:huggingface\.co|hf\.co)/([^/]+/[^/]+)/(?:blob|resolve)/([^/]+)/(.+)")


def resolve_single_file(path_or_repo_file: str | os.PathLike) -> Path:
    """A local path as is; `org/repo/file.safetensors` or a huggingface.co file URL (`.../blob/<rev>/<file>`)
    downloaded to (or found in) the Hugging Face cache."""
    path = Path(path_or_repo_file).expanduser()
    if path.exists():
        return path
    text = str(path_or_repo_file)
    match = _HUB_URL.fullmatch(text)
    if match:
        repo, revision, filename = match.groups()
    elif text.count("/") >= 2 and not text.startswith(("/", ".", "~")):
        parts = text.split("/")
        repo, revision, filename = "/".join(parts[:2]), None, "/".join(parts[2:])
    else:
        raise FileNotFoundError(
            f"checkpoint file {text!r} does not exist (pass a local .safetensors path, 'org/repo/file.safetensors' "
            "or a huggingface.co file URL)."
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:  # network, auth, missing file
        raise OSError(f"Could not fetch {filename!r} from the Hub repo {repo!r}: {type(exc).__name__}: {exc}") from exc


class SingleFile:
    """An open single-file checkpoint: `keys`, `shape(key)`, `read(key, rows=None)`, `metadata`.

    Use as a context manager (or call `close`). `read` returns a fresh CPU tensor (optionally only the rows
    `rows=(start, stop)` of the first dimension), never a view of the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = resolve_single_file(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint {str(self.path)!r} is not a file.")
        if self.path.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{self.path} is a pickled checkpoint ({self.path.suffix}); only .safetensors single files are read "
                "(unpickling can run code). Convert it to safetensors with a tool you trust first."
            )
        self._handle = _open(self.path)
        self.keys: list[str] = list(self._handle.keys())
        self._key_set = set(self.keys)
        self.metadata: dict[str, str] = dict(self._handle.metadata() or {})
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._read_since_open = 0

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self._shapes:
            self._shapes[key] = tuple(self._handle.get_slice(key).get_shape())
        return self._shapes[key]

    def read(self, key: str, rows: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key` (rows `start:stop` of its first dimension when `rows`), cast to `dtype` if floating."""
        if key not in self:
            raise CheckpointError(f"{self.path} has no tensor {key!r}.")
        if rows is None:
            view = self._handle.get_tensor(key)
        else:
            view = self._handle.get_slice(key)[rows[0]:rows[1]]
        if dtype is not None and view.is_floating_point() and view.dtype != dtype:
            tensor = view.to(dtype)
        else:
            tensor = view.clone()
        self._read_since_open += view.numel() * view.element_size()
        del view
        if self._read_since_open >= _WINDOW_BYTES:
            # every tensor read so far is a copy: reopening unmaps the pages read, so they leave the process
            self._handle.__exit__(None, None, None)
            self._handle = _open(self.path)
            self._read_since_open = 0
        return tensor

    def close(self) -> None:
        handle = self.__dict__.pop("_handle", None)
        if handle is not None:
            handle.__exit__(None, None, None)

    def __enter__(self) -> SingleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SingleFile({str(self.path)!r}, {len(self.keys)} tensors)"
