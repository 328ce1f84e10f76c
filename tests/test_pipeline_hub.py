"""ModularPipeline components, calls and the modular repo format: save/load, remote code, push_to_hub."""

import json
import logging
import textwrap

import pytest
import torch
from toy_components import ToyModel, ToyScaler, save_toy_model

from diffblocks import (
    ComponentLoadError,
    ComponentSpec,
    ConfigSpec,
    InputParam,
    ModularPipeline,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
    TrustRemoteCodeError,
)


class ApplyModel(ModularPipelineBlocks):
    @property
    def expected_components(self):
        return [ComponentSpec("model", ToyModel), ComponentSpec("scaler", ToyScaler, config={"factor": 3.0},
                                                                  default_creation_method="from_config")]

    @property
    def expected_configs(self):
        return [ConfigSpec("offset", 0.5)]

    @property
    def inputs(self):
        return [InputParam("x", torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("y", torch.Tensor)]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.y = components.model(bs.x) * components.scaler.factor + components.config.offset
        self.set_block_state(state, bs)
        return components, state


def blocks():
    return SequentialPipelineBlocks.from_blocks_dict({"apply": ApplyModel})


@pytest.fixture
def repo(tmp_path):
    model = save_toy_model(tmp_path / "src", "model", seed=1)
    return tmp_path / "src", model


def test_component_state_names_and_loading(repo):
    root, model = repo
    pipe = blocks().init_pipeline()
    assert pipe.component_names == ["model", "scaler"]
    assert pipe.pretrained_component_names == ["model"] and pipe.config_component_names == ["scaler"]
    assert pipe.null_component_names == ["model"]
    assert pipe.scaler.factor == 3.0  # config components exist right away
    pipe.update_components(model=ComponentSpec(name="model", type_hint=ToyModel, repo=str(root), subfolder="model"))
    assert pipe.null_component_names == []
    assert torch.equal(pipe.model.proj.weight, model.proj.weight)
    spec = ComponentSpec.from_component("model", pipe.model)  # the object remembers its spec
    assert spec.load_id == f"{root}|model|null|null" and spec.type_hint is ToyModel
    x = torch.randn(2, 4)
    assert torch.allclose(pipe(x=x, output="y"), model(x) * 3.0 + 0.5)


def test_load_components_per_component_dtype_and_errors(tmp_path, repo):
    root, _ = repo
    pipe = blocks().init_pipeline()
    spec = pipe.get_component_spec("model")
    spec.repo, spec.subfolder = str(root), "model"
    pipe.update_components(model=spec)  # loads
    pipe.update_components(model=None)
    pipe._specs["model"] = spec
    pipe.load_components(torch_dtype={"model": torch.float64, "default": torch.float32})
    assert pipe.model.proj.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown component"):
        pipe.load_components(["unet"])
    pipe.update_components(model=None)
    broken = pipe.get_component_spec("model")
    broken.subfolder = "missing"
    pipe._specs["model"] = broken
    with pytest.raises(ComponentLoadError, match="model"):
        pipe.load_components()


def test_update_components_logs_type_change_and_rejects_unknown(caplog):
    pipe = blocks().init_pipeline()

    class OtherScaler(ToyScaler):
        pass

    with caplog.at_level(logging.INFO, logger="diffblocks.runtime.pipeline"):
        pipe.update_components(scaler=OtherScaler(factor=1.0))
    assert "ToyScaler -> OtherScaler" in caplog.text
    pipe.update_components(offset=2.0)
    assert pipe.config.offset == 2.0
    with pytest.raises(ValueError, match="neither a component nor a config"):
        pipe.update_components(unet=1)


def test_missing_component_error_names_it():
    pipe = blocks().init_pipeline()
    with pytest.raises(TypeError) as err:
        pipe(x=torch.zeros(1, 4))
    assert any("not loaded: ['model']" in note for note in err.value.__notes__)


def test_output_selection_and_trace(repo):
    root, _ = repo
    pipe = blocks().init_pipeline()
    pipe.update_components(model=ToyModel.from_pretrained(root, subfolder="model"))
    x = torch.randn(1, 4)
    state = pipe(x=x, trace=True)
    assert set(pipe(x=x, output=["x", "y"])) == {"x", "y"}
    assert [r.path for r in state.trace.records] == ["SequentialPipelineBlocks", "SequentialPipelineBlocks.apply"]
    assert "apply" in state.trace.format()
    with pytest.raises(KeyError, match="output .images. is not produced by any block"):
        pipe(x=x, output="images")


def test_save_and_load_round_trip(tmp_path, repo):
    root, model = repo
    pipe = blocks().init_pipeline()
    pipe.update_components(model=ToyModel.from_pretrained(root, subfolder="model"),
                           scaler=ToyScaler(factor=5.0), offset=1.5)
    out = tmp_path / "saved"
    pipe.save_pretrained(out)
    index = json.loads((out / "modular_model_index.json").read_text())
    assert index["model"][:2] == ["toy_components", "ToyModel"]
    assert index["model"][2]["pretrained_model_name_or_path"] == str(out) and index["model"][2]["subfolder"] == "model"
    assert index["offset"] == 1.5
    assert index["scaler"][2]["subfolder"] == "scaler"  # customised config component saved as pretrained

    # the blocks are defined in this test module: custom code, copied next to the index
    assert (out / "test_pipeline_hub.py").exists()
    with pytest.raises(TrustRemoteCodeError):
        ModularPipeline.from_pretrained(out)
    loaded = ModularPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(loaded._blocks).__name__ == "SequentialPipelineBlocks"
    assert list(loaded._blocks.sub_blocks) == ["apply"]  # structure preserved, not a default fallback
    assert loaded.null_component_names == ["model", "scaler"]
    loaded.load_components()
    assert loaded.scaler.factor == 5.0 and loaded.config.offset == 1.5
    assert torch.equal(loaded.model.proj.weight, model.proj.weight)
    assert loaded.get_component_spec("model") == ComponentSpec("model", ToyModel, repo=str(out), subfolder="model")


def test_reads_modular_diffusers_spelling(tmp_path, repo):
    root, model = repo
    out = tmp_path / "md"
    out.mkdir()
    (out / "modular_model_index.json").write_text(json.dumps({
        "_class_name": "ModularPipeline", "_blocks_class_name": "SequentialPipelineBlocks", "offset": 0.0,
        "model": [None, None, {"repo": str(root), "subfolder": "model", "variant": None,
                               "type_hint": ["toy_components", "ToyModel"]}],
    }))
    pipe = blocks().init_pipeline(str(out))
    spec = pipe.get_component_spec("model")
    assert spec.pretrained_model_name_or_path == str(root) and spec.type_hint is ToyModel
    pipe.load_components()
    assert torch.equal(pipe.model.proj.weight, model.proj.weight)
    assert pipe.config.offset == 0.0


def test_type_hint_pairs_map_diffusers_names_to_ours():
    from diffblocks import ClassifierFreeGuidance
    from diffblocks.components.spec import resolve_type_hint

    assert resolve_type_hint(["diffusers", "ClassifierFreeGuidance"]) is ClassifierFreeGuidance
    with pytest.raises(ValueError, match="no class 'NotAModel'"):
        resolve_type_hint(["diffusers", "NotAModel"])


CUSTOM_BLOCK = textwrap.dedent('''
    import torch
    from diffblocks import InputParam, ModularPipelineBlocks, OutputParam

    from .helpers import double


    class ScaleLatentsBlock(ModularPipelineBlocks):
        @property
        def description(self):
            return "Scales latents by a factor (custom code from a repo)."

        @property
        def inputs(self):
            return [InputParam("latents", torch.Tensor, required=True), InputParam("scale", float, default=2.0)]

        @property
        def intermediate_outputs(self):
            return [OutputParam("scaled", torch.Tensor)]

        def __call__(self, components, state):
            bs = self.get_block_state(state)
            bs.scaled = double(bs.latents) * bs.scale / 2
            self.set_block_state(state, bs)
            return components, state
''')


def write_custom_repo(root, blocks_config_name="config.json"):
    root.mkdir()
    (root / "block.py").write_text(CUSTOM_BLOCK)
    (root / "helpers.py").write_text("def double(x):\n    return x * 2\n")
    (root / blocks_config_name).write_text(json.dumps(
        {"_class_name": "ScaleLatentsBlock", "auto_map": {"ModularPipelineBlocks": "block.ScaleLatentsBlock"}}))
    (root / "modular_model_index.json").write_text(json.dumps(
        {"_class_name": "ModularPipeline", "_blocks_class_name": "ScaleLatentsBlock"}))
    return root


@pytest.mark.parametrize("config_name", ["config.json", "modular_config.json"])
def test_custom_block_repo_requires_trust(tmp_path, config_name):
    repo = write_custom_repo(tmp_path / "custom", config_name)
    with pytest.raises(TrustRemoteCodeError, match="trust_remote_code=True"):
        ModularPipeline.from_pretrained(repo)
    with pytest.raises(TrustRemoteCodeError):
        ModularPipelineBlocks.from_pretrained(repo)
    pipe = ModularPipeline.from_pretrained(repo, trust_remote_code=True)
    latents = torch.ones(1, 2)
    assert torch.equal(pipe(latents=latents, scale=3.0, output="scaled"), latents * 3.0)
    block = ModularPipelineBlocks.from_pretrained(repo, trust_remote_code=True)
    assert type(block).__name__ == "ScaleLatentsBlock" and "custom code" in block.description

    # saving the loaded pipeline keeps the code and the auto_map, so the copy loads the same way
    out = tmp_path / "resaved"
    pipe.save_pretrained(out)
    assert (out / "block.py").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"ModularPipelineBlocks": "block.ScaleLatentsBlock"}
    with pytest.raises(TrustRemoteCodeError):
        ModularPipeline.from_pretrained(out)


def test_push_to_hub_uploads_the_saved_folder(tmp_path, repo, monkeypatch):
    import huggingface_hub

    uploads = []

    class RecordingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create", repo_id))

        def upload_folder(self, folder_path, repo_id, path_in_repo=None, commit_message=None, create_pr=False):
            from pathlib import Path

            files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            index = json.loads((Path(folder_path) / "modular_model_index.json").read_text())
            uploads.append(("upload", repo_id, files, index["model"][2]["pretrained_model_name_or_path"]))
            return "https://hub.example/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    root, _ = repo
    pipe = blocks().init_pipeline()
    pipe.update_components(model=ToyModel.from_pretrained(root, subfolder="model"))
    pipe.push_to_hub("me/toy-pipe")
    assert uploads[0] == ("create", "me/toy-pipe")
    kind, repo_id, files, location = uploads[1]
    assert (kind, repo_id, location) == ("upload", "me/toy-pipe", "me/toy-pipe")
    assert {"modular_model_index.json", "model/config.json", "model/diffusion_pytorch_model.safetensors"} <= set(files)


def test_local_folders_never_touch_the_network(tmp_path, monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise AssertionError("network call for a local folder")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    repo = write_custom_repo(tmp_path / "custom")
    pipe = ModularPipeline.from_pretrained(repo, trust_remote_code=True)
    assert pipe(latents=torch.ones(1), output="scaled").item() == 2.0


def test_enable_model_cpu_offload_builds_a_manager(repo):
    root, model = repo
    pipe = blocks().init_pipeline()
    pipe.update_components(model=ToyModel.from_pretrained(root, subfolder="model"))
    calls = []
    pipe.enable_model_cpu_offload(device="cpu", memory_info=lambda device: calls.append(device) or (10**9, 10**9))
    assert pipe.components_manager is not None
    assert pipe.components_manager.get_one(name="model") is pipe.model
    assert str(pipe.execution_device) == "cpu"
    x = torch.randn(2, 4)
    assert torch.allclose(pipe(x=x, output="y"), model(x) * 3.0 + 0.5)
    assert calls  # the memory provider was consulted


def test_component_spec_repo_alias():
    spec = ComponentSpec("unet", ToyModel, repo="org/a", subfolder="unet")
    assert spec.pretrained_model_name_or_path == "org/a" and spec.load_id == "org/a|unet|null|null"
    spec.repo = "org/b"
    assert spec.load_id == "org/b|unet|null|null"
    with pytest.raises(ValueError, match="disagree"):
        ComponentSpec("unet", ToyModel, repo="org/a", pretrained_model_name_or_path="org/b")
    assert ComponentSpec.decode_load_id("org/b|unet|fp16|null") == {
        "pretrained_model_name_or_path": "org/b", "subfolder": "unet", "variant": "fp16", "revision": None}
    with pytest.raises(ValueError, match="4 '\\|'-separated"):
        ComponentSpec.decode_load_id("org/b|unet")
