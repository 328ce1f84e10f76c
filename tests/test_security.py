"""No code from a repo runs without trust_remote_code, and a repo's paths stay inside the repo.

Every attack writes a marker file when its code runs; each test checks the marker stays absent (and, where the
option exists, appears with trust_remote_code=True, so the test would notice a broken marker).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from model_fixtures import SD_VAE
from toy_components import ToyModel, save_toy_model

from diffblocks import (
    AutoencoderKL,
    ComponentSpec,
    ModularPipeline,
    ModularPipelineBlocks,
    SequentialPipelineBlocks,
    TrustRemoteCodeError,
    UnsafePathError,
)
from diffblocks.components.hub import check_snapshot_file, resolve_file
from diffblocks.components.spec import resolve_type_hint

REPO_ROOT = Path(__file__).resolve().parents[1]


def _evil_module(folder: Path, marker: Path) -> str:
    """A uniquely named module in `folder` that writes `marker` when imported; returns its name."""
    name = f"evil_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "class Evil:\n    pass\n"
    )
    return name


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """The repo folder on sys.path, as the current directory is for `python -m ...` (the attack's setting)."""
    folder = tmp_path / "repo"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _standard_index(folder: Path, unet_entry: list) -> None:
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1", "unet": unet_entry,
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))


# -- trust: type hints ----------------------------------------------------------------------------------------
def test_standard_model_index_names_repo_module(on_path, tmp_path):
    marker = tmp_path / "marker"
    name = _evil_module(on_path, marker)
    _standard_index(on_path, [name, "Evil"])
    with pytest.raises(TrustRemoteCodeError) as info:
        ModularPipeline.from_pretrained(on_path)
    message = str(info.value)
    assert "'unet'" in message and name in message and "trust_remote_code=True" in message
    assert not marker.exists()
    # the same folder with trust: the module is imported (proves the marker works)
    ModularPipeline.from_pretrained(on_path, trust_remote_code=True)
    assert marker.read_text() == "ran"


def test_installed_module_not_imported_without_trust(on_path):
    _standard_index(on_path, ["this", "X"])  # the Zen of Python prints on import
    was_loaded = "this" in sys.modules
    with pytest.raises(TrustRemoteCodeError, match="'this'"):
        ModularPipeline.from_pretrained(on_path)
    assert ("this" in sys.modules) == was_loaded


def test_modular_index_entry_and_blocks_structure(on_path, tmp_path):
    marker = tmp_path / "marker"
    name = _evil_module(on_path, marker)
    index = {"_class_name": "ModularPipeline", "_blocks_class_name": "StableDiffusionAutoBlocks",
             "unet": [None, None, {"pretrained_model_name_or_path": str(on_path), "subfolder": "unet",
                                   "type_hint": [name, "Evil"]}]}
    (on_path / "modular_model_index.json").write_text(json.dumps(index))
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        ModularPipeline.from_pretrained(on_path)
    assert not marker.exists()
    # a blocks structure naming a class in the repo's module
    index = {"_class_name": "ModularPipeline", "_blocks_structure": {"class": f"{name}.Evil"}}
    (on_path / "modular_model_index.json").write_text(json.dumps(index))
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        ModularPipeline.from_pretrained(on_path)
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        ModularPipelineBlocks.from_pretrained(on_path)
    assert not marker.exists()


def test_blocks_auto_map_code_needs_trust(on_path, tmp_path):
    marker = tmp_path / "marker"
    name = _evil_module(on_path, marker)
    (on_path / "config.json").write_text(json.dumps({"_class_name": "Evil", "auto_map": {
        "ModularPipelineBlocks": f"{name}.Evil"}}))
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        ModularPipelineBlocks.from_pretrained(on_path)
    assert not marker.exists()


def test_component_spec_type_hints():
    assert resolve_type_hint(["diffusers", "AutoencoderKL"]) is AutoencoderKL  # the diffusers spelling: ours
    import transformers

    assert resolve_type_hint(["transformers", "CLIPTextModel"]) is transformers.CLIPTextModel
    with pytest.raises(TrustRemoteCodeError, match=r"\['os', 'system'\].*trust_remote_code=True"):
        ComponentSpec("x", type_hint=["os", "system"])
    with pytest.raises(TrustRemoteCodeError, match="'json'"):
        ComponentSpec("x", type_hint="json.JSONDecoder")
    with pytest.raises(ValueError, match="not a class"):
        resolve_type_hint(["transformers", "pipeline"])
    # a saved index naming the class the blocks already declare resolves to it (nothing imported)
    assert resolve_type_hint(["toy_components", "ToyModel"], declared=ToyModel) is ToyModel


def test_saved_toy_pipeline_reloads_without_trust(tmp_path):
    """Repo entries naming the classes the user's own blocks declare need no trust."""
    from test_pipeline_hub import blocks as toy_blocks

    save_toy_model(tmp_path / "src", "model", seed=1)
    pipe = toy_blocks().init_pipeline()
    pipe.update_components(model=ToyModel.from_pretrained(tmp_path / "src", subfolder="model"))
    pipe.save_pretrained(tmp_path / "saved")
    loaded = toy_blocks().init_pipeline(str(tmp_path / "saved"))
    loaded.load_components()
    assert torch.equal(loaded.model.proj.weight, pipe.model.proj.weight)


def test_transformers_auto_map_code_is_not_run(tmp_path):
    """A component folder whose config points transformers at repo code: transformers refuses without trust."""
    marker = tmp_path / "marker"
    folder = tmp_path / "repo" / "text_encoder"
    folder.mkdir(parents=True)
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}}))
    spec = ComponentSpec("text_encoder", type_hint=["transformers", "AutoModel"],
                         repo=str(tmp_path / "repo"), subfolder="text_encoder")
    with pytest.raises(Exception, match="trust_remote_code"):
        spec.load()
    assert not marker.exists()


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "diffblocks.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["inspect", "generate"])
def test_cli_does_not_import_repo_code(tmp_path, command):
    folder = tmp_path / "repo"
    folder.mkdir()
    marker = tmp_path / "marker"
    name = _evil_module(folder, marker)
    _standard_index(folder, [name, "Evil"])
    args = ["inspect", "."] if command == "inspect" else ["generate", "--model", ".", "--prompt", "x",
                                                           "--out", str(tmp_path / "o.png")]
    result = _run_cli(args, cwd=folder)  # the repo is the current directory, so on sys.path for `-m`
    assert result.returncode != 0
    assert "trust_remote_code" in result.stderr
    assert not marker.exists()


# -- paths -----------------------------------------------------------------------------------------------------
@pytest.fixture
def vae_repo(tmp_path):
    torch.manual_seed(0)
    AutoencoderKL.from_config(SD_VAE).save_pretrained(tmp_path / "repo" / "vae")
    (tmp_path / "outside").mkdir()
    return tmp_path / "repo"


@pytest.mark.parametrize("subfolder", ["../outside", "vae/../../outside", "/etc", "C:\\Windows"])
def test_subfolder_traversal_refused(vae_repo, subfolder):
    with pytest.raises(UnsafePathError, match="outside the repo"):
        ComponentSpec("vae", AutoencoderKL, repo=str(vae_repo), subfolder=subfolder).load()
    with pytest.raises(UnsafePathError):
        resolve_file(vae_repo, "config.json", subfolder=subfolder)
    # Hub repo ids are refused before any download
    with pytest.raises(UnsafePathError):
        resolve_file("some-org/some-repo", "config.json", subfolder=subfolder)


def test_index_entry_subfolder_traversal_refused(vae_repo):
    index = {"_class_name": "ModularPipeline", "_blocks_class_name": "StableDiffusionAutoBlocks",
             "vae": [None, None, {"pretrained_model_name_or_path": str(vae_repo), "subfolder": "../outside",
                                  "type_hint": ["diffblocks", "AutoencoderKL"]}]}
    (vae_repo / "modular_model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafePathError, match="'vae'.*'../outside'"):
        ModularPipeline.from_pretrained(vae_repo)


def test_shard_index_entry_outside_refused(vae_repo):
    folder = vae_repo / "vae"
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.rename(vae_repo.parent / "outside" / "stolen.safetensors")
    weight_map = {"encoder.conv_in.weight": "../../outside/stolen.safetensors"}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UnsafePathError, match="stolen.safetensors"):
        AutoencoderKL.from_pretrained(vae_repo, subfolder="vae")


def test_symlink_escaping_repo_refused(vae_repo):
    folder = vae_repo / "vae"
    weights = folder / "diffusion_pytorch_model.safetensors"
    target = vae_repo.parent / "outside" / "w.safetensors"
    weights.rename(target)
    weights.symlink_to(target)
    with pytest.raises(UnsafePathError, match="outside the repo folder"):
        AutoencoderKL.from_pretrained(vae_repo, subfolder="vae")
    # a symlinked component folder is refused too, also for loaders that read the folder themselves
    (vae_repo / "text_encoder").symlink_to(vae_repo.parent / "outside", target_is_directory=True)
    with pytest.raises(UnsafePathError):
        ComponentSpec("text_encoder", type_hint=["transformers", "CLIPTextModel"], repo=str(vae_repo),
                      subfolder="text_encoder").load()


def test_hub_cache_snapshot_layout(tmp_path):
    """Snapshot files link into the repo's blobs/ folder (allowed); a link leaving the repo cache is not."""
    torch.manual_seed(0)
    cache = tmp_path / "models--org--name"
    src = tmp_path / "src"
    AutoencoderKL.from_config(SD_VAE).save_pretrained(src / "vae")
    snapshot = cache / "snapshots" / "abc123"
    (snapshot / "vae").mkdir(parents=True)
    (cache / "blobs").mkdir()
    for file in (src / "vae").iterdir():
        blob = cache / "blobs" / file.name
        file.rename(blob)
        (snapshot / "vae" / file.name).symlink_to(Path("../../../blobs") / file.name)
    model = AutoencoderKL.from_pretrained(snapshot, subfolder="vae")  # a snapshot used as a local folder
    assert isinstance(model, AutoencoderKL)
    assert check_snapshot_file(snapshot / "vae" / "config.json", "org/name") == snapshot / "vae" / "config.json"
    evil = snapshot / "vae" / "evil.json"
    evil.symlink_to(src)
    with pytest.raises(UnsafePathError):
        check_snapshot_file(evil, "org/name")


# -- no unpickling ----------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_pickle_checkpoint_never_unpickled(vae_repo, tmp_path):
    marker = tmp_path / "marker"
    folder = vae_repo / "vae"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model.bin.*safetensors"):
        AutoencoderKL.from_pretrained(vae_repo, subfolder="vae")
    assert not marker.exists()


def test_custom_blocks_still_load_with_trust(tmp_path):
    """The allowlist does not get in the way of trusted custom blocks."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "myblocks.py").write_text(
        "from diffblocks import ModularPipelineBlocks\n"
        "class Mine(ModularPipelineBlocks):\n"
        "    def __call__(self, components, state):\n        return components, state\n")
    (folder / "config.json").write_text(json.dumps({"_class_name": "Mine",
                                                    "auto_map": {"ModularPipelineBlocks": "myblocks.Mine"}}))
    block = ModularPipelineBlocks.from_pretrained(folder, trust_remote_code=True)
    assert type(block).__name__ == "Mine"
    assert isinstance(SequentialPipelineBlocks.from_blocks_dict({"m": block}), SequentialPipelineBlocks)
