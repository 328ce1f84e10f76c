"""Finding files locally or on the Hugging Face Hub, and uploading folders.

Local folders never touch the network: a path that exists on disk is always read from disk. Subfolders and file
names must stay inside the repo (no `..`, no absolute paths, no symlinks leading out): see `trust.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .trust import allowed_root, check_inside, check_relative


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
    subfolder = check_relative(subfolder, "subfolder", path_or_repo_id)
    check_relative(filename, "file name", path_or_repo_id)
    if is_local(path_or_repo_id):
        path = Path(path_or_repo_id).expanduser() / subfolder / filename
        if path.is_file():
            check_inside(path, allowed_root(path_or_repo_id), path_or_repo_id)
            return path
        if required:
            raise FileNotFoundError(f"{filename!r} not found in local folder {str(Path(path_or_repo_id) / subfolder)!r}.")
        return None

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(str(path_or_repo_id), filename, subfolder=subfolder or None, revision=revision))
    except LocalEntryNotFoundError as exc:
        if not required and _in_cache(str(path_or_repo_id)):
            return None  # offline with a cached repo: this optional file is just not there
        # offline or unreachable, and nothing cached: say so now rather than after probing every other file
        raise OSError(
            f"{path_or_repo_id!r} is not a local folder, and {filename!r} could not be fetched from the Hugging Face "
            f"Hub (offline or unreachable) nor found in the cache. Check the path or repo id, or go online "
            f"({type(exc).__name__})."
        ) from exc
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
    return check_snapshot_file(path, path_or_repo_id)


def _in_cache(repo_id: str) -> bool:
    """Whether the Hub cache holds a snapshot folder of `repo_id`."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}").is_dir()


def check_snapshot_file(path: Path, repo_id: str | os.PathLike) -> Path:
    """A file downloaded into the Hub cache must resolve inside its repo's cache folder (snapshot + blobs)."""
    for parent in path.parents:
        if parent.name == "snapshots":
            check_inside(path, parent.parent.resolve(), repo_id)
            return path
    return path


def check_local_tree(path_or_repo_id: str | os.PathLike, subfolder: str | None = None) -> None:
    """Refuse a local component folder whose subfolder or files (symlinks) lead outside the repo.

    For loaders that read the folder themselves (transformers' tokenizers and models).
    """
    subfolder = check_relative(subfolder, "subfolder", path_or_repo_id)
    if not is_local(path_or_repo_id):
        return
    root = allowed_root(path_or_repo_id)
    folder = Path(path_or_repo_id).expanduser() / subfolder
    check_inside(folder, root, path_or_repo_id)
    if folder.is_dir():
        for entry in folder.rglob("*"):
            if entry.is_symlink() or entry.is_file():
                check_inside(entry, root, path_or_repo_id)


def list_files(path_or_repo_id: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> list[str]:
    """File names (relative to `subfolder`) in a local folder or a Hub repo."""
    subfolder = check_relative(subfolder, "subfolder", path_or_repo_id).strip("/")
    if is_local(path_or_repo_id):
        root = Path(path_or_repo_id).expanduser() / subfolder
        if not root.is_dir():
            return []
        check_inside(root, allowed_root(path_or_repo_id), path_or_repo_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    from huggingface_hub import list_repo_files

    prefix = f"{subfolder}/" if subfolder else ""
    return sorted(f[len(prefix):] for f in list_repo_files(str(path_or_repo_id), revision=revision) if f.startswith(prefix))


def upload_folder(folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload with diffblocks",
                  private: bool | None = None, token: str | None = None, create_pr: bool = False,
                  path_in_repo: str | None = None, ignore_patterns: list[str] | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it (minus `ignore_patterns`); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    extra = {"ignore_patterns": ignore_patterns} if ignore_patterns else {}
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, path_in_repo=path_in_repo,
        commit_message=commit_message, create_pr=create_pr, **extra,
    )
    return str(info)
