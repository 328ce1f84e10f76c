"""The procedural shapes data set (deterministic, every combination) and the model-free classifier that scores
prompt adherence: it must read the ground-truth images perfectly, and tolerate noise and blur like a model's."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from diffblocks.demo_data import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    ShapeSpec,
    all_combinations,
    classify_image,
    generate_dataset,
    parse_caption,
    render,
    score,
)
from diffblocks.demo_data.shapes import main as shapes_main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    records = generate_dataset(out, seed=0, per_combination=2)
    return out, records


def _digest(folder) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_every_combination_present_and_captions_parse(dataset):
    out, records = dataset
    assert len(all_combinations()) == len(COLORS) * (len(BACKGROUNDS) - 1) * len(SHAPES) == 90
    counts: dict[tuple[str, str, str], int] = {}
    for record in records:
        color, shape, background = parse_caption(record["text"])
        assert color != background and record["text"] == f"a {color} {shape} on a {background} background"
        counts[(color, shape, background)] = counts.get((color, shape, background), 0) + 1
    assert counts == {combo: 2 for combo in all_combinations()}
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    assert all(set(r) == {"file_name", "text"} and (out / r["file_name"]).is_file() for r in records)
    assert Image.open(out / records[0]["file_name"]).size == (64, 64)


def test_generation_is_deterministic_from_the_seed(dataset, tmp_path):
    out, _ = dataset
    generate_dataset(tmp_path / "again", seed=0, per_combination=2)
    generate_dataset(tmp_path / "other", seed=1, per_combination=2)
    assert _digest(tmp_path / "again") == _digest(out)
    assert _digest(tmp_path / "other") != _digest(out)


def test_object_placement_and_size_within_the_stated_ranges(dataset):
    out, records = dataset
    for record in records[:60]:
        pixels = np.asarray(Image.open(out / record["file_name"]))
        color, shape, _ = parse_caption(record["text"])
        ys, xs = np.nonzero((pixels == COLORS[color]).all(axis=2))
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 64
        assert 0.35 - 2 / 64 <= extent <= 0.70 + 2 / 64, (record, extent)
        assert abs((ys.min() + ys.max() + 1) / 2 / 64 - 0.5) <= 0.06 + 1 / 64
        assert abs((xs.min() + xs.max() + 1) / 2 / 64 - 0.5) <= 0.06 + 1 / 64


def test_classifier_reads_ground_truth_perfectly(dataset):
    out, records = dataset
    result = score((Image.open(out / r["file_name"]), r["text"]) for r in records)
    assert result == {"color": 1.0, "background": 1.0, "shape": 1.0, "all": 1.0, "count": 180.0}


def test_fill_ratios_match_the_geometry():
    # square 1, circle pi/4, upright triangle 1/2 (the formulas the shape rule is built on)
    for shape, expected, tol in (("square", 1.0, 0.01), ("circle", math.pi / 4, 0.02), ("triangle", 0.5, 0.06)):
        got = classify_image(render(ShapeSpec("red", shape, "black", size=0.6), 128))
        assert got.shape == shape and abs(got.fill_ratio - expected) < tol, (shape, got)


def test_classifier_tolerates_noise_and_blur(dataset):
    out, records = dataset
    rng = np.random.default_rng(0)
    images = [(Image.open(out / r["file_name"]), r["text"]) for r in records]
    noisy = score((np.clip(np.asarray(im, np.float32) + rng.normal(0, 25, (64, 64, 3)), 0, 255), t)
                  for im, t in images)
    blurred = score((im.filter(ImageFilter.GaussianBlur(1)), t) for im, t in images)
    for result in (noisy, blurred):
        assert result["color"] >= 0.98 and result["background"] >= 0.98 and result["shape"] >= 0.95, result


def test_classifier_on_a_plain_image_and_bad_input():
    plain = classify_image(Image.new("RGB", (64, 64), COLORS["blue"]))
    assert plain.background == "blue" and plain.color is None and plain.caption is None
    with pytest.raises(ValueError, match=r"expected an RGB image \(H x W x 3\).*\(64, 64\)"):
        classify_image(np.zeros((64, 64)))


def test_bad_specs_and_captions_are_refused():
    with pytest.raises(ValueError, match="must differ from the background"):
        ShapeSpec("red", "circle", "red")
    with pytest.raises(ValueError, match="shape must be one of"):
        ShapeSpec("red", "star", "black")
    with pytest.raises(ValueError, match="not a caption of this data set"):
        parse_caption("a purple circle on a black background")
    with pytest.raises(ValueError, match="per_combination must be at least 1"):
        generate_dataset("unused", per_combination=0)
    spec = ShapeSpec("red", "circle", "black")
    assert spec.caption == "a red circle on a black background"


def test_command_line_writes_the_dataset(tmp_path, capsys):
    assert shapes_main([str(tmp_path), "--seed", "3", "--per-combination", "1", "--size", "32"]) == 0
    assert "Wrote 90 images" in capsys.readouterr().out
    assert len((tmp_path / "metadata.jsonl").read_text().splitlines()) == 90
    assert Image.open(tmp_path / "00.png").size == (32, 32)
