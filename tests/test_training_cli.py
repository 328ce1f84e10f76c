"""`diffblocks train` from the command line, multi-process under torchrun, and bad input caught up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from training_fixtures import RES, base_model, captioned_folder, fast_config, model_without_text_encoder

from diffblocks.training import TrainingConfigError, TrainingDataError, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_model(tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return captioned_folder(tmp_path_factory.mktemp("cli-data"), n=2)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _args(base, data, out, *extra):
    return ["train", "text2image", "--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data),
            "--output_dir", str(out), "--resolution", str(RES), "--train_batch_size", "1", "--max_train_steps", "2",
            "--report_to", "none", "--seed", "0", *extra]


def test_cli_errors_are_one_line_messages(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffblocks", "train", "text2image", "--resolution", "100",
                           "--pretrained_model_name_or_path", "x", "--train_data_dir", str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--resolution=100 must be a positive multiple of 8" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_output(base, data, tmp_path):
    """`python -m diffblocks train` under torchrun (gloo on CPU): both ranks train, only rank 0 writes."""
    import socket

    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "diffblocks", *_args(base, data, out, "--checkpointing_steps", "2", "--lr_scheduler", "cosine",
                                      "--lr_warmup_steps", "1")]
    from test_distributed import _run  # own session, every rank killed on timeout (no orphaned workers)

    proc = _run(cmd, ROOT, _env())  # stdout and stderr merged
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.count("Trained 2 steps") == 2  # both ranks finished
    log = proc.stdout
    assert log.count("Saved the fine-tuned model") == 1  # only the main process wrote it
    ckpt = out / "checkpoint-2"
    assert {p.name for p in ckpt.glob("generator_*")} == {"generator_0.safetensors", "generator_1.safetensors"}
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# -- bad input: clear errors before any training step --------------------------------------------------------
def _no_step(out: Path) -> None:
    assert not out.exists() or not list(out.glob("checkpoint-*"))


@pytest.mark.parametrize("case", ["missing", "empty", "no-captions", "unreadable", "empty-caption", "bad-jsonl"])
def test_bad_data_folders(base, tmp_path, case):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case in ("no-captions", "unreadable", "empty-caption"):
        captioned_folder(folder, n=2)
        if case == "no-captions":
            (folder / "img1.txt").unlink()
        elif case == "unreadable":
            (folder / "img1.png").write_bytes(b"not a png at all")
        else:
            (folder / "img0.txt").write_text("  ")
    if case == "bad-jsonl":
        captioned_folder(folder, n=2, mode="jsonl")
        (folder / "metadata.jsonl").write_text('{"file_name": "img0.png"}\n')
    expected = {"missing": "is not an existing folder", "empty": "holds no training images",
                "no-captions": "no captions for 1 image.*img1.png", "unreadable": "cannot read image .*img1.png",
                "empty-caption": "empty caption for img0.png", "bad-jsonl": "img0.png' has no caption"}[case]
    with pytest.raises(TrainingDataError, match=expected):
        train(fast_config(base, folder, tmp_path / "out"))
    _no_step(tmp_path / "out")


def test_bad_options(base, data, tmp_path):
    with pytest.raises(TrainingConfigError, match="resolution=20 must be a positive multiple of 8"):
        train(fast_config(base, data, tmp_path / "out", resolution=20))
    with pytest.raises(TrainingConfigError, match="with_prior_preservation needs --class_data_dir"):
        train(fast_config(base, data, tmp_path / "out", workflow="dreambooth", instance_data_dir=str(data),
                          instance_prompt="a sks", with_prior_preservation=True))
    with pytest.raises(TrainingConfigError, match="use_8bit_adam needs bitsandbytes"):
        train(fast_config(base, data, tmp_path / "out", use_8bit_adam=True))
    with pytest.raises(TrainingConfigError, match="not a checkpoint folder"):
        train(fast_config(base, data, tmp_path / "out", resume_from_checkpoint=str(tmp_path)))
    _no_step(tmp_path / "out")


def test_lora_text_encoder_on_a_model_without_one(base, data, tmp_path):
    model = model_without_text_encoder(base, tmp_path)
    with pytest.raises(TrainingConfigError, match="--lora --train_text_encoder: the model .* has no text_encoder"):
        train(fast_config(model, data, tmp_path / "out", lora=True, train_text_encoder=True))
    _no_step(tmp_path / "out")


def test_dataset_name_reads_a_datasets_dataset(monkeypatch):
    """--dataset_name goes through `datasets.load_dataset(name, config)["train"]` and its columns."""
    import types

    from fixtures_sd import test_image

    from diffblocks.training.data import TrainingDataset, hub_dataset_examples

    rows = [{"img": test_image(20, seed=i), "caption": [f"caption {i}", "second"]} for i in range(2)]

    class Split(list):
        column_names = ["img", "caption"]

    seen = {}

    def load_dataset(name, config=None, cache_dir=None):
        seen.update(name=name, config=config)
        return {"train": Split(rows)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = hub_dataset_examples("user/pokemon", "default", "img", "caption")
    assert seen == {"name": "user/pokemon", "config": "default"}
    assert [e.caption for e in examples] == ["caption 0", "caption 1"]  # the first of several captions
    item = TrainingDataset(examples, 16, center_crop=True)[1]
    assert item["image"].shape == (3, 16, 16) and item["prompt"] == "caption 1"
    with pytest.raises(TrainingDataError, match="no column 'text' \\(--caption_column\\)"):
        hub_dataset_examples("user/pokemon", None, "img", "text")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TrainingDataError, match="--dataset_name needs the `datasets` library"):
        hub_dataset_examples("user/pokemon", None, "img", "caption")
