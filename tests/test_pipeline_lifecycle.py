"""The documented component lifecycle names (`load_default_components`, `register_components`,
`unload_components`), what `print(pipe.blocks)` says about the loaded components, and `output=` typos."""

import gc
import weakref

import pytest
import torch
from toy_components import ToyModel, ToyScaler, save_toy_model

from diffblocks import (
    ComponentsManager,
    ComponentSpec,
    DDIMScheduler,
    EulerDiscreteScheduler,
    InputParam,
    ModularPipelineBlocks,
    OutputParam,
    SequentialPipelineBlocks,
)


class ApplyModel(ModularPipelineBlocks):
    @property
    def expected_components(self):
        return [ComponentSpec("model", ToyModel),
                ComponentSpec("scaler", ToyScaler, config={"factor": 3.0}, default_creation_method="from_config"),
                ComponentSpec("scheduler", EulerDiscreteScheduler)]

    @property
    def inputs(self):
        return [InputParam("x", torch.Tensor, required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("y", torch.Tensor), OutputParam("images")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.y = components.model(bs.x) * components.scaler.factor
        bs.images = [bs.y]
        self.set_block_state(state, bs)
        return components, state


def blocks():
    return SequentialPipelineBlocks.from_blocks_dict({"apply": ApplyModel})


@pytest.fixture
def pipe(tmp_path):
    model = save_toy_model(tmp_path / "src", "model", seed=1)
    pipe = blocks().init_pipeline()
    spec = pipe.get_component_spec("model")
    spec.repo, spec.subfolder = str(tmp_path / "src"), "model"
    pipe._specs["model"] = spec  # a location for the default component, as a repo's index gives
    pipe.expected_model = model
    return pipe


def test_load_default_components_loads_every_located_pretrained_component_with_kwargs(pipe):
    assert pipe.null_component_names == ["model", "scheduler"]
    pipe.load_default_components(torch_dtype=torch.float64)
    assert pipe.null_component_names == ["scheduler"]  # no location given for it: not a default to load
    assert pipe.model.proj.weight.dtype == torch.float64
    assert torch.equal(pipe.model.proj.weight, pipe.expected_model.proj.weight.double())
    pipe.load_default_components()  # nothing left to load: a no-op, the loaded object is kept
    assert pipe.model.proj.weight.dtype == torch.float64


def test_unload_components_frees_clears_and_can_reload(pipe):
    manager = ComponentsManager()
    pipe.components_manager = manager
    pipe.load_default_components()
    assert len(manager.components) == 1
    ref = weakref.ref(pipe.model)
    assert pipe.unload_components() == ["model"]
    gc.collect()
    assert ref() is None, "the pipeline or the manager still holds the unloaded model"
    assert pipe.model is None and pipe.null_component_names == ["model", "scheduler"]
    assert manager.components == {}
    assert pipe.get_component_spec("model").subfolder == "model"  # the spec stays: load again
    pipe.load_components()
    assert torch.equal(pipe.model.proj.weight, pipe.expected_model.proj.weight)
    assert pipe.unload_components("model") == ["model"] and pipe.unload_components(["model"]) == []
    with pytest.raises(ValueError, match=r"unknown component\(s\) \['unet'\]"):
        pipe.unload_components(["unet"])


def test_register_components_sets_objects_keeps_specs_and_manages(pipe):
    manager = ComponentsManager()
    pipe.components_manager = manager
    model = ToyModel(width=4)
    pipe.register_components(model=model)
    assert pipe.model is model and pipe.components["model"] is model
    assert list(manager.components.values()) == [model]
    assert pipe.get_component_spec("model").subfolder == "model"  # registering keeps the spec
    pipe.register_components(scaler=ToyScaler(factor=2.0))
    assert torch.allclose(pipe(x=torch.ones(1, 4), output="y"), model(torch.ones(1, 4)) * 2.0)
    pipe.register_components(model=None)
    assert pipe.model is None
    with pytest.raises(ValueError, match=r"'modle' is not a component of this pipeline \(did you mean 'model'\?\)"):
        pipe.register_components(modle=model)
    with pytest.raises(TypeError, match="update_components"):
        pipe.register_components(model=ComponentSpec("model", ToyModel))


def test_print_blocks_shows_the_scheduler_class_loaded_not_the_declared_default(pipe):
    declared = repr(pipe.blocks)
    assert "scheduler (EulerDiscreteScheduler)" in declared
    pipe.update_components(scheduler=DDIMScheduler())
    shown = repr(pipe.blocks)
    assert "scheduler (DDIMScheduler, in this pipeline; the blocks declare EulerDiscreteScheduler)" in shown
    assert "DDIMScheduler, in this pipeline" in pipe.blocks.doc
    assert "DDIMScheduler, in this pipeline" in repr(pipe.blocks.sub_blocks["apply"])
    # a pipeline built from that copy describes its own components, not the first pipeline's
    other = pipe.blocks.init_pipeline()
    assert "DDIMScheduler" not in repr(other.blocks) and "DDIMScheduler" not in other.doc


def test_output_typo_names_the_valid_outputs_before_running(pipe):
    calls = []
    pipe.register_components(model=ToyModel(width=4))
    original = pipe.model.forward
    pipe.model.forward = lambda x: calls.append(1) or original(x)
    with pytest.raises(KeyError) as err:
        pipe(x=torch.ones(1, 4), output="image")
    message = str(err.value)
    assert "output 'image' is not produced by any block of this pipeline (did you mean 'images'?)" in message
    assert "['images', 'x', 'y']" in message
    assert calls == [], "the typo must be reported before the models run"
    with pytest.raises(KeyError, match=r"output 'yy' .*did you mean 'y'"):
        pipe(x=torch.ones(1, 4), output=["images", "yy"])
    assert pipe(x=torch.ones(1, 4), output=["images", "y"]).keys() == {"images", "y"}


def test_attribute_typo_suggests_the_documented_name(pipe):
    with pytest.raises(AttributeError, match="Did you mean 'load_default_components'"):
        pipe.load_default_componenets()  # the spelling in one of the reference documentation pages
