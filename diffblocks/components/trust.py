"""What a repo may make diffblocks import, and where its paths may point.

A repo names classes (`["diffusers", "UNet2DConditionModel"]` type hints in `model_index.json` /
`modular_model_index.json`) and files (subfolders, shard index entries). Without `trust_remote_code=True`:

* class names resolve only inside the libraries of `TRUSTED_LIBRARIES`: `diffblocks` itself, the `diffusers`
  spelling (mapped to the diffblocks class of the same name, never importing diffusers) and `transformers`.
  Anything else is refused with `TrustRemoteCodeError`; nothing is imported. Add an installed package you trust
  with `TRUSTED_LIBRARIES.add("my_package")`.
* paths stay inside the repo folder: subfolders and file names with `..` or an absolute path, and symlinks that
  leave the folder, raise `UnsafePathError` (for local folders and Hub snapshots alike).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = ["TRUSTED_LIBRARIES", "TrustRemoteCodeError", "UnsafePathError", "check_relative", "check_inside",
           "allowed_root"]

# Libraries whose class names a repo may use without trust_remote_code (see the module docstring).
TRUSTED_LIBRARIES: set[str] = {"diffblocks", "diffusers", "transformers"}


class TrustRemoteCodeError(ValueError):
    """A repo ships or names code and the caller did not opt in with trust_remote_code=True."""


class UnsafePathError(ValueError):
    """A path named by a repo leaves the repo's folder."""


def check_relative(value: str | None, what: str, where: object) -> str:
    """`value` as a relative POSIX path inside the repo; refuses `..`, absolute and drive paths."""
    if not value:
        return ""
    text = str(value)
    posix, windows = PurePosixPath(text.replace("\\", "/")), PureWindowsPath(text)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts:
        raise UnsafePathError(
            f"{where}: {what} {text!r} points outside the repo (absolute paths and '..' are refused); "
            f"use a path relative to the repo folder."
        )
    return text


def allowed_root(folder: str | os.PathLike) -> Path:
    """The folder a local repo's files may resolve into.

    A Hugging Face cache snapshot (`.../models--org--name/snapshots/<rev>`) links its files into the sibling
    `blobs/` folder, so its allowed root is the `models--org--name` folder.
    """
    root = Path(folder).expanduser().resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.split("--")[0] in ("models", "datasets", "spaces"):
        return root.parent.parent
    return root


def check_inside(path: str | os.PathLike, root: Path, where: object) -> Path:
    """`path` (symlinks followed) if it lies inside `root`, else UnsafePathError."""
    real = Path(path).resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(
            f"{where}: {path} resolves to {real}, outside the repo folder {root} (a symlink or path escaping "
            f"the repo); refusing to read it."
        )
    return real
