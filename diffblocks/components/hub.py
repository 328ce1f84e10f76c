"""Finding files locally or on the Hugging Face Hub, and uploading folders.

Local folders never touch the network: a path that exists on disk is always read from disk.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_local(path_or_repo_id: str | os.PathLike) -> bool:
    return Path(path_or_repo_id).expanduser().exists()


def resolve_file(
    path_or_repo_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    required: bool = True,
) -> Path | None:
    """Path of `filename` in a local folder or a Hub repo (downloaded to the cache).

    Returns None for a missing file when `required` is False; otherwise raises FileNotFoundError.
    """
    subfolder = subfolder or ""
    if is_local(path_or_repo_id):
        path = Path(path_or_repo_id).expanduser() / subfolder / filename
        if path.is_file():
            return path
        if required:
            raise FileNotFoundError(f"{filename!r} not found in local folder {str(Path(path_or_repo_id) / subfolder)!r}.")
        return None

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                str(path_or_repo_id), filename, subfolder=subfolder or None, revision=revision
            )
        )
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(
                f"{filename!r} not found in Hub repo {path_or_repo_id!r} (subfolder {subfolder!r})."
            ) from None
        return None
    except Exception as exc:  # network, auth, unknown repo
        if not required and "404" in str(exc):
            return None
        raise OSError(
            f"Could not fetch {filename!r} from {path_or_repo_id!r}: it is not a local folder and the Hub "
            f"download failed ({type(exc).__name__}: {exc})."
        ) from exc


def list_files(path_or_repo_id: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> list[str]:
    """File names (relative to `subfolder`) in a local folder or a Hub repo."""
    subfolder = (subfolder or "").strip("/")
    if is_local(path_or_repo_id):
        root = Path(path_or_repo_id).expanduser() / subfolder
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    from huggingface_hub import list_repo_files

    prefix = f"{subfolder}/" if subfolder else ""
    return sorted(f[len(prefix):] for f in list_repo_files(str(path_or_repo_id), revision=revision) if f.startswith(prefix))


def upload_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload with diffblocks",
                  private: bool | None = None, token: str | None = None, create_pr: bool = False,
                  path_in_repo: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, path_in_repo=path_in_repo,
        commit_message=commit_message, create_pr=create_pr,
    )
    return str(info)
