"""Auto CPU offload across real pipelines: same images with and without it, under a simulated budget."""

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15, build_sdxl

from diffblocks import ComponentsManager, ModularPipeline
from diffblocks.components.offload import module_memory_bytes


def run(pipe, prompt):
    return pipe(prompt=prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np", output="images")


def load(folder, **kwargs):
    pipe = ModularPipeline.from_pretrained(str(folder), **kwargs)
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload-folders")
    return build_sdxl(root), build_sd15(root)


def test_two_pipelines_share_one_offloading_manager(folders):
    sdxl_dir, sd_dir = folders
    expected_xl = run(load(sdxl_dir), "a red cat")
    expected_sd = run(load(sd_dir), "a blue dog")

    manager = ComponentsManager()
    xl = load(sdxl_dir, components_manager=manager, collection="xl")
    sd = load(sd_dir, components_manager=manager, collection="sd")
    modules = [c for c in manager.components.values() if isinstance(c, torch.nn.Module)]
    largest = max(module_memory_bytes(m) for m in modules)
    # a budget that holds only the largest model: every load must evict what ran before it
    manager.enable_auto_cpu_offload(device="cpu", memory_reserve_margin=0, max_memory=largest)
    offloader = manager.auto_offload

    assert np.array_equal(run(xl, "a red cat"), expected_xl)
    xl_events = list(offloader.events)
    assert ("evict", next(i for i in manager.get_ids(collection="xl") if i.startswith("text_encoder_"))) in xl_events
    assert np.array_equal(run(sd, "a blue dog"), expected_sd)
    sd_loads = [cid for kind, cid in list(offloader.events)[len(xl_events):] if kind == "load"]
    assert sd_loads and all(cid in manager.get_ids(collection="sd") for cid in sd_loads)
    assert offloader.resident_bytes() <= largest
    # and back again: the SDXL pipeline still gives the same image after the SD pipeline took the device
    assert np.array_equal(run(xl, "a red cat"), expected_xl)
