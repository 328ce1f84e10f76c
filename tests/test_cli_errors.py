"""CLI user errors: one clear line on stderr and exit status 1 (the traceback only with --debug), checked before
any model is loaded or any step runs; typos and unreachable Hub ids fail at once and list the presets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffblocks.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_preset_typo_lists_presets(capsys):
    start = time.perf_counter()
    assert main(["inspect", "sd15"]) == 1
    line = _err_line(capsys)
    assert time.perf_counter() - start < 5  # no Hub round trips
    assert line.startswith("diffblocks inspect: ValueError: target 'sd15' is not a preset (toy, sd, sdxl, flux)")
    assert "Did you mean 'sd'?" in line and "--debug" in line


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="'sd15' is not a preset"):
        main(["inspect", "sd15", "--debug"])


def test_unknown_hub_id_offline_fails_fast(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    assert main(["inspect", "someorg/no-such-model"]) == 1
    line = _err_line(capsys)
    assert time.perf_counter() - start < 5
    assert "'someorg/no-such-model' is not a local folder" in line and "(toy, sd, sdxl, flux)" in line
    assert main(["generate", "--model", "sd15", "--prompt", "x"]) == 1
    assert "--model 'sd15' is not a preset" in _err_line(capsys)


def test_missing_output_folder_fails_before_loading(tmp_path, capsys):
    out = tmp_path / "missing" / "o.png"
    start = time.perf_counter()
    # the model folder is empty: had the command loaded it, the error would be about the model instead
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(out)]) == 1
    line = _err_line(capsys)
    assert time.perf_counter() - start < 5
    assert f"--out {str(out)!r}" in line and "does not exist" in line and "nothing was generated" in line


def test_error_in_a_block_is_one_line(tmp_path, capsys):
    """A bad value reaching a block: the block's message, on one line (here a repo error: no index)."""
    assert main(["inspect", str(tmp_path)]) == 1
    line = _err_line(capsys)
    assert line.startswith("diffblocks inspect: OSError:") and "model_index.json" in line


def test_real_process_prints_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "diffblocks", "inspect", "sd15"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a preset" in lines[0], result.stderr
