"""ComponentsManager: registry, pattern lookup, duplicate detection, collections, info and repr.

Models are tiny nn.Linear subclasses written to and read from a local folder, so load ids are real
"folder|subfolder|variant|revision" strings. Behaviour is checked against the reference
(diffusers' ComponentsManager) where the two are meant to agree.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffblocks.components.manager import ComponentsManager

LOGGER = "diffblocks.components.manager"


class TinyTextEncoder(torch.nn.Linear):
    def __init__(self):
        super().__init__(4, 8)
        self.register_buffer("position_ids", torch.arange(3))


class TinyUNet(torch.nn.Linear):
    def __init__(self):
        super().__init__(8, 8)


class TinyVAE(torch.nn.Linear):
    def __init__(self):
        super().__init__(8, 3)


class TinyLoadableUNet(TinyUNet):
    """Loads from `<root>/<subfolder>/model.safetensors` like a Hub model class (for ComponentSpec.load)."""

    @classmethod
    def from_pretrained(cls, path, subfolder=None, variant=None, revision=None, torch_dtype=None):
        model = cls()
        model.load_state_dict(load_file(os.path.join(path, subfolder or "", "model.safetensors")))
        return model


class TinyScheduler:
    """A non-module component (configs, schedulers, tokenizers are registered too)."""


def _load_id(path, subfolder, variant=None, revision=None):
    return "|".join("null" if v is None else str(v) for v in (path, subfolder, variant, revision))


def _load(cls, root, subfolder):
    """Load a tiny model from `root/subfolder` and stamp its load id the way ComponentSpec.load does."""
    model = cls()
    model.load_state_dict(load_file(os.path.join(root, subfolder, "model.safetensors")))
    model._diffblocks_load_id = _load_id(str(root), subfolder)
    return model


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cm_repo")
    torch.manual_seed(0)
    for sub, cls in [("text_encoder", TinyTextEncoder), ("text_encoder_2", TinyTextEncoder), ("unet", TinyUNet),
                     ("vae", TinyVAE)]:
        os.makedirs(root / sub)
        save_file(cls().state_dict(), str(root / sub / "model.safetensors"))
    return str(root)


@pytest.fixture
def cm(repo):
    manager = ComponentsManager()
    manager.add("text_encoder", _load(TinyTextEncoder, repo, "text_encoder"))
    manager.add("text_encoder_2", _load(TinyTextEncoder, repo, "text_encoder_2"))
    manager.add("unet", _load(TinyUNet, repo, "unet"), collection="sdxl")
    manager.add("vae", _load(TinyVAE, repo, "vae"), collection="sdxl")
    manager.add("scheduler", TinyScheduler())
    return manager


def _id(cm, name):
    (cid,) = cm.get_ids(name)
    return cid


def test_add_returns_name_and_object_id(repo):
    cm = ComponentsManager()
    unet = _load(TinyUNet, repo, "unet")
    cid = cm.add("unet", unet)
    assert cid == f"unet_{id(unet)}"
    assert cm.components[cid] is unet
    assert cm.get_one(name="unet") is unet
    assert cm.get_one(component_id=cid) is unet
    # adding the very same object under the same name again keeps one entry
    assert cm.add("unet", unet) == cid and len(cm) == 1


@pytest.mark.parametrize(
    "pattern, collection, expected",
    [
        ("unet", None, "unet"),  # exact
        ("unet*", None, "unet"),  # prefix
        ("text_encoder_2*", None, "text_encoder_2"),
        ("*coder_2*", None, "text_encoder_2"),  # contains (broken in the reference)
        ("*nco*", "sdxl", None),  # contains + collection: nothing
        ("*_2", None, "text_encoder_2"),  # suffix
        ("!unet", "sdxl", "vae"),  # exclusion
        ("!text_encoder*|unet|scheduler", None, "vae"),  # negated OR with a prefix term
        ("vae|scheduler", "sdxl", "vae"),  # OR, filtered by collection
        ("encoder_2", None, "text_encoder_2"),  # plain substring when no exact name exists
        ("text_encoder", None, "text_encoder"),  # exact wins over substring
    ],
)
def test_get_one_patterns(cm, pattern, collection, expected):
    if expected is None:
        with pytest.raises(ValueError, match="no component matches"):
            cm.get_one(name=pattern, collection=collection)
    else:
        assert cm.get_one(name=pattern, collection=collection) is cm.components[_id(cm, expected)]


def test_search_components_or_and_negation(cm):
    assert sorted(cm.search_components("unet|vae")) == ["unet", "vae"]
    assert sorted(cm.search_components("text_encoder*")) == ["text_encoder", "text_encoder_2"]
    assert sorted(cm.search_components("!text_encoder*")) == ["scheduler", "unet", "vae"]
    assert sorted(cm.search_components(collection="sdxl")) == ["unet", "vae"]
    assert cm.search_components("*zzz*") == {}
    by_id = cm.search_components("unet", return_dict_with_names=False)
    assert list(by_id) == [_id(cm, "unet")]


def test_get_one_no_match_error_names_pattern_and_contents(cm):
    with pytest.raises(ValueError) as err:
        cm.get_one(name="controlnet")
    msg = str(err.value)
    assert "controlnet" in msg
    for name in ("text_encoder", "unet", "vae", "scheduler"):
        assert _id(cm, name) in msg
    assert "collection sdxl" in msg


def test_get_one_several_matches_error_lists_them(cm):
    with pytest.raises(ValueError) as err:
        cm.get_one(name="text_encoder*")
    msg = str(err.value)
    assert "text_encoder*" in msg and "2 components match" in msg
    assert _id(cm, "text_encoder") in msg and _id(cm, "text_encoder_2") in msg


def test_get_one_unknown_collection_is_named(cm):
    with pytest.raises(ValueError, match=r"Collection 'sd15' does not exist \(collections: \['sdxl'\]\)"):
        cm.get_one(name="unet", collection="sd15")


def test_unknown_id_errors(cm):
    for call in (
        lambda: cm.remove("unet_123"),
        lambda: cm.get_model_info("unet_123"),
        lambda: cm.get_one(component_id="unet_123"),
        lambda: cm.get_components_by_ids(["unet_123"]),
    ):
        with pytest.raises(KeyError) as err:
            call()
        assert "unet_123" in str(err.value) and _id(cm, "unet") in str(err.value)
    with pytest.raises(KeyError, match="not in collection 'sdxl'"):
        cm.remove_from_collection(_id(cm, "text_encoder"), "sdxl")
    with pytest.raises(KeyError, match="collection 'nope' does not exist"):
        cm.remove_from_collection(_id(cm, "unet"), "nope")


def test_bad_pattern_errors(cm):
    with pytest.raises(ValueError, match="non-empty"):
        cm.get_one(name="!")
    with pytest.raises(ValueError, match="empty alternative"):
        cm.get_one(name="unet||vae")
    with pytest.raises(TypeError, match="pattern string"):
        cm.search_components(["unet"])


def test_get_ids_and_components_by_names(cm):
    assert cm.get_ids(["unet", "vae"]) == [_id(cm, "unet"), _id(cm, "vae")]
    assert cm.get_ids("unet", collection="sdxl") == [_id(cm, "unet")]
    assert cm.get_ids("text_encoder", collection="sdxl") == []
    assert cm.get_ids(collection="sdxl") == [_id(cm, "unet"), _id(cm, "vae")]
    # names that are not registered are skipped, so a pipeline's null_component_names can be passed as is
    got = cm.get_components_by_names(names=["text_encoder", "unet", "vae", "controlnet"])
    assert list(got) == ["text_encoder", "unet", "vae"]
    assert got["unet"] is cm.get_one(name="unet")
    assert cm.get_components_by_ids([_id(cm, "vae")]) == {"vae": cm.get_one(name="vae")}


def test_get_components_by_names_duplicate_name_is_an_error(cm, repo):
    other = _load(TinyUNet, repo, "unet")
    cm.add("unet", other, collection="refiner")
    with pytest.raises(ValueError, match="more than one component named 'unet'") as err:
        cm.get_components_by_names(["unet"])
    assert "collection=" in str(err.value)
    assert cm.get_components_by_names(["unet"], collection="refiner") == {"unet": other}


def test_duplicate_load_id_warns_and_names_existing_id(repo, caplog):
    cm = ComponentsManager()
    first = _load(TinyTextEncoder, repo, "text_encoder")
    first_id = cm.add("text_encoder", first)
    duplicate = _load(TinyTextEncoder, repo, "text_encoder")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dup_id = cm.add("text_encoder_duplicated", duplicate)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1
    assert f"adding component '{dup_id}'" in warnings[0]
    assert f"duplicate load_id '{first._diffblocks_load_id}'" in warnings[0]
    assert f"existing components: {first_id}" in warnings[0]
    # both stay registered: the manager warns, it does not delete for you
    assert set(cm.components) == {first_id, dup_id}


def test_no_duplicate_warning_for_distinct_or_null_load_ids(repo, caplog):
    cm = ComponentsManager()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cm.add("text_encoder", _load(TinyTextEncoder, repo, "text_encoder"))
        cm.add("text_encoder_2", _load(TinyTextEncoder, repo, "text_encoder_2"))
        for _ in range(2):
            created = TinyUNet()
            created._diffblocks_load_id = "null"  # built from a config, not a checkpoint
            cm.add("unet", created)
        cm.add("vae", TinyVAE())  # no load id at all
    assert [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER] == []
    assert len(cm) == 5


def test_same_object_under_another_name_warns(repo, caplog):
    cm = ComponentsManager()
    unet = _load(TinyUNet, repo, "unet")
    first = cm.add("unet", unet)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        second = cm.add("unet_alias", unet)
    assert first != second and len(cm) == 2
    assert any(first in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_collection_same_name_replaces(repo):
    cm = ComponentsManager()
    unet_a = _load(TinyUNet, repo, "unet")
    unet_b = TinyUNet()
    unet_b._diffblocks_load_id = _load_id("other/repo", "unet", "fp16")
    id_a = cm.add("unet", unet_a, collection="sdxl")
    id_b = cm.add("unet", unet_b, collection="sdxl")
    assert cm.get_one(name="unet", collection="sdxl") is unet_b
    assert id_a not in cm.components  # held by no other collection: gone from the manager
    assert cm.collections["sdxl"] == [id_b]


def test_collection_replace_keeps_component_held_elsewhere(repo):
    cm = ComponentsManager()
    unet_a = _load(TinyUNet, repo, "unet")
    id_a = cm.add("unet", unet_a, collection="sdxl")
    cm.add("unet", unet_a, collection="shared")  # same object, second collection
    id_b = cm.add("unet", TinyUNet(), collection="sdxl")
    assert id_a in cm.components
    assert cm.collections["sdxl"] == [id_b]
    assert cm.collections["shared"] == [id_a]
    assert cm.get_model_info(id_a, "collection") == {"collection": "shared"}


def test_remove_and_remove_from_collection(cm):
    vae_id = _id(cm, "vae")
    cm.remove(vae_id)
    assert vae_id not in cm.components and vae_id not in cm.collections["sdxl"]
    unet_id = _id(cm, "unet")
    cm.remove_from_collection(unet_id, "sdxl")
    assert unet_id not in cm.components  # it was only in that collection


def test_get_model_info_sizes_and_fields(cm):
    te_id = _id(cm, "text_encoder")
    info = cm.get_model_info(te_id)
    # Linear(4, 8) fp32 weight + bias, int64 position_ids buffer of 3
    expected = (4 * 8 + 8) * 4 + 3 * 8
    assert info["size_bytes"] == expected
    assert info["size_gb"] == pytest.approx(expected / 1024**3)
    assert info["class_name"] == "TinyTextEncoder"
    assert info["device"] == "cpu" and info["dtype"] == "float32"  # dtype of the parameters
    assert info["residency"] == {"cpu": expected}
    assert info["load_id"].endswith("|text_encoder|null|null")
    assert info["collection"] is None and info["has_hook"] is False and info["execution_device"] is None
    assert cm.get_model_info(_id(cm, "unet"), fields=["collection", "dtype"]) == {
        "collection": "sdxl",
        "dtype": "float32",
    }
    with pytest.raises(ValueError, match="unknown field.*'colour'"):
        cm.get_model_info(te_id, fields="colour")
    sched = cm.get_model_info(_id(cm, "scheduler"))
    assert sched["class_name"] == "TinyScheduler" and "size_bytes" not in sched


def test_repr_table(cm, repo):
    cm.components[_id(cm, "unet")].to(torch.float16)
    text = repr(cm)
    lines = text.splitlines()
    assert "Models:" in lines and "Other components:" in lines
    header = next(line for line in lines if line.startswith("Id "))
    for col in ("Class", "Device", "Dtype", "Size", "Load ID", "Collection", "Adapters"):
        assert col in header
    unet_row = next(line for line in lines if line.startswith(_id(cm, "unet")))
    cells = [c.strip(" |") for c in unet_row.split(" | ")]
    assert cells[1:5] == ["TinyUNet", "cpu", "float16", f"{(8 * 8 + 8) * 2} B"]
    assert cells[5] == cm.components[_id(cm, "unet")]._diffblocks_load_id
    assert cells[6] == "sdxl"
    sched_row = next(line for line in lines if line.startswith(_id(cm, "scheduler")))
    assert "TinyScheduler" in sched_row
    assert repr(ComponentsManager()) == "ComponentsManager: no components registered."


def test_same_registry_as_reference(repo):
    """The same sequence of adds leaves the same ids and collections as diffusers' ComponentsManager."""
    from diffusers import ComponentsManager as RefManager

    objs = {n: _load(c, repo, n) for n, c in [("unet", TinyUNet), ("vae", TinyVAE)]}
    objs["unet2"] = TinyUNet()
    for o in objs.values():
        o._diffusers_load_id = getattr(o, "_diffblocks_load_id", "null")
    ops = [("unet", "unet", "a"), ("vae", "vae", "a"), ("unet", "unet", "b"), ("unet", "unet2", "a"),
           ("vae", "vae", None)]
    ours, ref = ComponentsManager(), RefManager()
    for name, key, coll in ops:
        assert ours.add(name, objs[key], coll) == ref.add(name, objs[key], coll)
    assert set(ours.components) == set(ref.components)
    assert {c: set(m) for c, m in ours.collections.items()} == {c: set(m) for c, m in ref.collections.items()}
    for names in (["unet"], ["unet", "vae"]):
        assert sorted(ours.get_ids(names)) == sorted(ref.get_ids(names))


def _tiny_clip_repo(root):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=8, bos_token_id=0,
                            eos_token_id=1, pad_token_id=1)
    CLIPTextModel(config).save_pretrained(str(root / "text_encoder"))
    return CLIPTextModel


def test_docs_duplicate_detection_with_component_spec(tmp_path, caplog):
    """The documentation's duplicate-detection example, on a local tiny checkpoint."""
    from diffblocks.components.spec import ComponentSpec

    CLIPTextModel = _tiny_clip_repo(tmp_path)
    repo = str(tmp_path)
    comp = ComponentsManager()
    spec = ComponentSpec(name="text_encoder", repo=repo, subfolder="text_encoder", type_hint=CLIPTextModel)
    spec_duplicated = ComponentSpec(
        name="text_encoder_duplicated", repo=repo, subfolder="text_encoder", type_hint=CLIPTextModel
    )
    first_id = comp.add("text_encoder", spec.load())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dup_id = comp.add("text_encoder_duplicated", spec_duplicated.load())
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert warning == (
        f"ComponentsManager: adding component '{dup_id}', but it has duplicate load_id "
        f"'{repo}|text_encoder|null|null' with existing components: {first_id}. "
        "To remove a duplicate, call `components_manager.remove('<component_id>')`."
    )
    # the same checkpoint loaded into a new object without a spec carries no load id: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        comp.add("text_encoder", CLIPTextModel.from_pretrained(repo, subfolder="text_encoder"))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(comp) == 3


def test_docs_collections_with_component_spec(repo, tmp_path):
    """The documentation's collection example: a second UNet under the same name replaces the first."""
    from diffblocks.components.spec import ComponentSpec

    other = tmp_path / "juggernaut"
    os.makedirs(other / "unet")
    save_file(TinyUNet().state_dict(), str(other / "unet" / "model.safetensors"))
    comp = ComponentsManager()
    spec = ComponentSpec(name="unet", repo=repo, subfolder="unet", type_hint=TinyLoadableUNet)
    spec2 = ComponentSpec(name="unet", repo=str(other), subfolder="unet", type_hint=TinyLoadableUNet)
    first = comp.add("unet", spec.load(), collection="sdxl")
    unet2 = spec2.load()
    second = comp.add("unet", unet2, collection="sdxl")
    assert list(comp.components) == [second] and first != second
    assert comp.get_one(name="unet", collection="sdxl") is unet2
    assert comp.get_model_info(second, "load_id") == {"load_id": f"{other}|unet|null|null"}
    comp.remove(second)
    assert len(comp) == 0 and comp.collections["sdxl"] == []
