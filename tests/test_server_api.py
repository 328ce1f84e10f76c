"""`diffblocks serve` as a ComfyUI API client sees it: a real server process on a free loopback port with the
tiny SD 1.5 folder in `--models`, driven over HTTP and the socket (queue, cache, interrupt, errors, files)."""

from __future__ import annotations

import copy
import io
import json
import uuid
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("websocket")

import requests  # noqa: E402
from fixtures_sd import build_sd15  # noqa: E402
from PIL import Image  # noqa: E402
from server_helpers import ServerProcess, Socket, events, queue_prompt  # noqa: E402

DATA = Path(__file__).parent / "data"

# ComfyUI's default text-to-image workflow in API format (the frontend's default graph), ckpt_name set to the tiny
# model; the tests run it smaller and shorter (64 px, a few steps) to stay fast on CPUs.
DEFAULT_WORKFLOW = json.loads((DATA / "comfyui_default_workflow_api.json").read_text())
DEFAULT_WORKFLOW["4"]["inputs"]["ckpt_name"] = "sd15"


def workflow(seed: int | None = None, steps: int = 4, size: int = 64) -> dict:
    prompt = copy.deepcopy(DEFAULT_WORKFLOW)
    if seed is not None:
        prompt["3"]["inputs"]["seed"] = seed
    prompt["3"]["inputs"]["steps"] = steps
    prompt["5"]["inputs"].update(width=size, height=size)
    return prompt


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    models = root / "models"
    models.mkdir()
    running = ServerProcess(root, models, wait=False)  # starts while the tiny model is written
    build_sd15(models)
    running.wait()
    yield running
    running.close()


@pytest.fixture
def ws(server):
    sock = Socket(server.url, uuid.uuid4().hex)
    sock.recv()  # the status greeting
    yield sock
    sock.close()


def _queue(server, ws, prompt) -> str:
    r = queue_prompt(server.url, prompt, ws.client_id)
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


def _image_of(server, prompt_id) -> Image.Image:
    entry = requests.get(f"{server.url}/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["9"]["images"][0]
    r = requests.get(f"{server.url}/view", params=image)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(r.content))


def test_object_info_lists_core_and_block_nodes(server):
    info = requests.get(f"{server.url}/object_info").json()
    for core in ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode",
                 "SaveImage", "LoadImage"):
        assert core in info, core
    blocks = [name for name, spec in info.items() if spec["category"].startswith("diffblocks/")]
    assert blocks, "no diffblocks/ block nodes"
    assert "sd15" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    for name, spec in info.items():  # the fields the frontend reads, consistent with each other
        assert spec["name"] == name and isinstance(spec["display_name"], str)
        assert len(spec["output"]) == len(spec["output_name"]) == len(spec["output_is_list"]), name
        for section in ("required", "optional"):
            for field, value in spec["input"].get(section, {}).items():
                assert isinstance(value, list) and value and (isinstance(value[0], (str, list))), (name, field)
    assert requests.get(f"{server.url}/api/object_info/KSampler").json() == {"KSampler": info["KSampler"]}
    assert requests.get(f"{server.url}/api/models/checkpoints").json() == \
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "checkpoints" in requests.get(f"{server.url}/api/models").json()
    paths = requests.get(f"{server.url}/internal/folder_paths").json()
    assert str(Path(server.models).resolve()) in paths["checkpoints"]


def test_default_workflow_png_then_seed_change_reuses_text_encodes(server, ws):
    first = _queue(server, ws, workflow())
    got = ws.until_done(first, timeout=120)
    assert events(got, "execution_success")
    assert not [m for m in got if isinstance(m, bytes)], "live previews with the server's default 'none'"
    steps = [e["value"] for e in events(got, "progress") if e["node"] == "3"]
    assert steps == [1, 2, 3, 4] and all(e["max"] == 4 for e in events(got, "progress") if e["node"] == "3")
    executed = {e["node"]: e["output"] for e in events(got, "executed")}
    image = _image_of(server, first)
    assert image.size == (64, 64) and executed["9"]["images"][0]["filename"].startswith("ComfyUI")

    second = _queue(server, ws, workflow(seed=7))
    got = ws.until_done(second, timeout=120)
    cached = set(events(got, "execution_cached")[0]["nodes"])
    assert {"4", "5", "6", "7"} <= cached and "3" not in cached
    assert [e["node"] for e in events(got, "executing") if e["node"]] == ["3", "8", "9"]
    assert _image_of(server, second).tobytes() != image.tobytes()


def test_broken_prompts_get_400_with_node_errors(server):
    bad_link = workflow()
    bad_link["8"]["inputs"]["samples"] = ["42", 0]
    out_of_range = workflow(steps=0)
    unknown = {**workflow(), "10": {"class_type": "NoSuchNode", "inputs": {}}}
    bad_ckpt = workflow()
    bad_ckpt["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    for prompt in (bad_link, out_of_range, unknown, bad_ckpt):
        r = requests.post(f"{server.url}/prompt", json={"prompt": prompt})
        assert r.status_code == 400, r.text
        body = r.json()
        assert set(body) == {"error", "node_errors"} and body["error"]["message"]
        assert {"type", "message", "details", "extra_info"} <= set(body["error"])
    body = requests.post(f"{server.url}/prompt", json={"prompt": out_of_range}).json()
    assert "3" in body["node_errors"] and body["node_errors"]["3"]["class_type"] == "KSampler"
    assert body["node_errors"]["3"]["errors"][0]["type"]
    assert requests.get(f"{server.url}/queue").json()["queue_pending"] == []


def test_interrupt_stops_a_50_step_prompt_within_one_step(server, ws):
    pid = _queue(server, ws, workflow(seed=11, steps=50))
    before = ws.until(lambda m: isinstance(m, tuple) and m[0] == "progress" and m[1]["node"] == "3"
                      and m[1]["value"] >= 2, timeout=120)
    assert requests.post(f"{server.url}/interrupt").status_code == 200
    after = ws.until_done(pid, timeout=60)
    assert events(after, "execution_interrupted")[0]["node_id"] == "3"
    at_interrupt = events(before, "progress")[-1]["value"]
    later = [e["value"] for e in events(after, "progress")]
    assert not later or max(later) <= at_interrupt + 2, (at_interrupt, later)  # the step under way, at most
    entry = requests.get(f"{server.url}/history/{pid}").json()[pid]
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}


def test_three_queued_prompts_all_complete(server, ws):
    ids = [_queue(server, ws, workflow(seed=100 + i, steps=2)) for i in range(3)]
    ws.until_done(ids[-1], timeout=120)
    images = [_image_of(server, pid) for pid in ids]
    assert len({image.tobytes() for image in images}) == 3
    assert requests.get(f"{server.url}/prompt").json()["exec_info"]["queue_remaining"] == 0


def test_failing_node_reports_execution_error_and_the_next_prompt_runs(server, ws):
    up = requests.post(f"{server.url}/upload/image", files={"image": ("broken.png", b"this is not a PNG")})
    assert up.status_code == 200
    prompt = workflow(steps=2)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": up.json()["name"]}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]
    pid = _queue(server, ws, prompt)
    got = ws.until_done(pid, timeout=120)
    error = events(got, "execution_error")[0]
    assert error["node_id"] == "10" and error["node_type"] == "LoadImage", error
    assert error["exception_message"] and error["traceback"]
    job = requests.get(f"{server.url}/api/jobs/{pid}").json()
    assert job["status"] == "failed"

    ok = _queue(server, ws, workflow(seed=5, steps=2))
    assert events(ws.until_done(ok, timeout=120), "execution_success")
    assert _image_of(server, ok).size == (64, 64)


def test_view_refuses_traversal(server):
    (Path(server.output).parent / "secret.txt").write_text("secret")
    for params in ({"filename": "../secret.txt"}, {"filename": "secret.txt", "subfolder": ".."},
                   {"filename": "/etc/passwd"}, {"filename": "secret.txt", "type": "../"}):
        r = requests.get(f"{server.url}/view", params=params)
        assert r.status_code in (400, 403) and b"secret" not in r.content, params


def test_prompt_is_saved_in_the_png(server, ws):
    """SaveImage keeps the API prompt (and the frontend's workflow from extra_pnginfo) in the PNG, as ComfyUI."""
    prompt = workflow(seed=3, steps=2)
    r = requests.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": ws.client_id,
                                                     "extra_data": {"extra_pnginfo": {"workflow": {"id": "w1"}}}})
    pid = r.json()["prompt_id"]
    ws.until_done(pid, timeout=120)
    image = _image_of(server, pid)
    assert json.loads(image.info["prompt"]) == prompt
    assert json.loads(image.info["workflow"]) == {"id": "w1"}


TITLES = {"3": "KSampler", "4": "Load Checkpoint", "5": "Empty Latent Image", "6": "Positive Prompt",
          "7": "Negative Prompt", "8": "VAE Decode", "9": "Save Image"}


def test_third_party_client_queues_and_fetches_the_image(server):
    """comfy-api-simplified (PyPI; written against ComfyUI): the API-format export with `_meta` titles, queued
    and waited for over its own socket client, the image fetched through /history and /view."""
    simplified = pytest.importorskip("comfy_api_simplified")

    exported = {nid: {**node, "_meta": {"title": TITLES[nid]}} for nid, node in workflow(steps=2).items()}
    wf = simplified.ComfyWorkflowWrapper(exported)
    wf.set_node_param("KSampler", "seed", 1234)
    wf.set_node_param("Positive Prompt", "text", "a red circle")
    api = simplified.ComfyApiWrapper(server.url)
    images = api.queue_and_wait_images(wf, "Save Image")
    (name, data), = images.items()
    assert name.startswith("ComfyUI") and name.endswith(".png")
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert api.get_system_stats()["devices"] and "KSampler" in api.get_object_info("KSampler")


def test_server_and_diffblocks_run_give_the_same_image(server, ws, tmp_path):
    """Parity: one workflow through the server and through `diffblocks run` (the same engine without a server;
    tests/test_server_engine.py holds the engine to the Python preset) gives the same pixels."""
    import numpy as np

    from diffblocks.cli import main

    prompt = workflow(seed=77, steps=3)
    pid = _queue(server, ws, prompt)
    ws.until_done(pid, timeout=120)
    served = np.asarray(_image_of(server, pid))
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(prompt))
    assert main(["run", str(path), "--models", str(server.models), "--output", str(tmp_path / "out")]) == 0
    (png,) = (tmp_path / "out").glob("*.png")
    assert np.array_equal(served, np.asarray(Image.open(png)))


def test_live_previews_when_a_prompt_asks(server, ws):
    """The frontend's "Live preview method" setting sends extra_data.preview_method; previews then arrive as
    ComfyUI's binary frames: >I event 1 (PREVIEW_IMAGE), >I image type 2 (PNG), the PNG."""
    import struct

    r = requests.post(f"{server.url}/prompt", json={"prompt": workflow(seed=9, steps=3), "client_id": ws.client_id,
                                                     "extra_data": {"preview_method": "auto"}})
    got = ws.until_done(r.json()["prompt_id"], timeout=120)
    frames = [m for m in got if isinstance(m, bytes)]
    assert frames, "no preview frames"
    assert all(struct.unpack(">II", frame[:8]) == (1, 2) for frame in frames)
    preview = Image.open(io.BytesIO(frames[-1][8:]))
    assert preview.format == "PNG" and preview.size[0] > 0


def test_docs_client_example_runs(server, tmp_path, monkeypatch):
    """docs/server.md's "Using it from code" example, as written, against this server."""
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "websocket" in block]
    code = code.replace("127.0.0.1:8188", f"127.0.0.1:{server.port}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflow_api.json").write_text(json.dumps(workflow(seed=21, steps=2)))
    namespace: dict = {}
    exec(compile(code, "docs/server.md", "exec"), namespace)
    assert namespace["png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(namespace["png"])).size == (64, 64)


def test_free_unloads_models_and_the_next_prompt_loads_them_again(server, ws):
    """POST /free (the frontend's "Unload models" / "Free model and node cache"): after it, the same prompt runs
    every node again (nothing cached: the checkpoint is loaded anew) and gives the same image."""
    prompt = workflow(seed=123)
    first = _queue(server, ws, prompt)
    ws.until_done(first, timeout=120)
    again = _queue(server, ws, prompt)
    got = ws.until_done(again, timeout=120)
    assert {"3", "4", "9"} <= set(events(got, "execution_cached")[0]["nodes"])  # fully cached before /free

    assert requests.post(f"{server.url}/free", json={"unload_models": True, "free_memory": True}).status_code == 200
    assert requests.post(f"{server.url}/api/free", json=[]).status_code == 400
    third = _queue(server, ws, prompt)
    got = ws.until_done(third, timeout=120)
    assert events(got, "execution_cached")[0]["nodes"] == []
    assert {"3", "4", "9"} <= {e["node"] for e in events(got, "executing") if e["node"]}
    assert _image_of(server, third).tobytes() == _image_of(server, first).tobytes()
