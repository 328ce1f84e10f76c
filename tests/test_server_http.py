"""The HTTP side of `diffblocks serve` (queue, socket events, history, jobs, files, user data, origin checks)
against a small stand-in engine written here, so each behaviour is pinned without loading a model. The real
engine's end-to-end runs are in test_server_api.py."""

from __future__ import annotations

import io
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("websocket")

import requests  # noqa: E402
from PIL import Image  # noqa: E402
from server_helpers import AppThread, Socket, events, queue_prompt  # noqa: E402

from diffblocks import Interrupted  # noqa: E402
from diffblocks.server.app import create_app  # noqa: E402
from diffblocks.server.engine import NodeExecutionError  # noqa: E402

NODES = ("Const", "Slow", "Fail", "Save")


@dataclass
class Validation:
    ok: bool
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)


class StandInEngine:
    """Nodes: Const (cached while its inputs stay the same), Slow (steps with progress, previews and
    interrupt checks), Fail (raises), Save (writes a PNG and returns it as its UI output). Runs nodes in id
    order; enough to exercise everything the HTTP side does with an engine."""

    class registry:  # noqa: N801
        @staticmethod
        def object_info() -> dict:
            return {name: {"input": {"required": {}}, "output": [], "name": name, "display_name": name,
                           "category": "test", "output_node": name == "Save"} for name in NODES}

    def __init__(self, output_dir) -> None:
        self.output_dir = output_dir
        self._stop = threading.Event()
        self._seen: dict[str, dict] = {}
        self.runs = 0

    def validate(self, prompt: dict) -> Validation:
        bad = {nid: {"errors": [{"type": "invalid_class", "message": "unknown node", "details": node.get(
                   "class_type", ""), "extra_info": {}}], "dependent_outputs": [], "class_type": node.get("class_type")}
               for nid, node in prompt.items() if node.get("class_type") not in NODES}
        if bad:
            return Validation(False, {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs "
                                      "failed validation", "details": "", "extra_info": {}}, bad)
        outputs = [nid for nid, node in prompt.items() if node["class_type"] in ("Save", "Fail", "Slow")]
        return Validation(True, outputs=outputs)

    def execute(self, prompt_id, prompt, outputs, hooks, extra_data=None):
        self._stop.clear()
        self.runs += 1
        cached = [nid for nid, n in prompt.items() if n["class_type"] == "Const" and self._seen.get(nid) == n["inputs"]]
        hooks.on_cached(cached)
        result = {}
        for nid in sorted(prompt):
            node = prompt[nid]
            kind = node["class_type"]
            if nid in cached or (kind in ("Save", "Fail", "Slow") and nid not in outputs):
                continue
            hooks.on_executing(nid)
            if kind == "Const":
                self._seen[nid] = node["inputs"]
            elif kind == "Slow":
                steps = node["inputs"].get("steps", 5)
                for i in range(steps):
                    if self._stop.is_set():
                        raise Interrupted("interrupted")
                    time.sleep(node["inputs"].get("delay", 0.02))
                    hooks.on_progress(nid, i + 1, steps)
                    if hooks.on_preview is not None:
                        hooks.on_preview(nid, Image.new("RGB", (8, 8), (i % 256, 0, 0)))
            elif kind == "Fail":
                raise NodeExecutionError(nid, "Fail", "this node always fails", "ValueError",
                                         ["Traceback (most recent call last):\n", "ValueError: always\n"], {"x": 1})
            elif kind == "Save":
                name = f"{node['inputs'].get('prefix', 'img')}_{self.runs:05d}.png"
                Image.new("RGB", (4, 4), (0, 255, 0)).save(self.output_dir / name)
                ui = {"images": [{"filename": name, "subfolder": "", "type": "output"}]}
                result[nid] = ui
                hooks.on_executed(nid, ui)
        hooks.on_executing(None)
        return result

    def interrupt(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    engine = StandInEngine(root / "output")
    app = create_app(engine, models_dir=root / "models", input_dir=root / "input", output_dir=root / "output",
                     temp_dir=root / "temp", user_dir=root / "user", web_root=None)
    running = AppThread(app)
    running.root = root
    yield running
    running.close()


@pytest.fixture
def socket_(server):
    ws = Socket(server.url, uuid.uuid4().hex)
    kind, data = ws.recv()
    assert kind == "status" and data["sid"] == ws.client_id and "queue_remaining" in data["status"]["exec_info"]
    yield ws
    ws.close()


def _ok(url, prompt, ws, **extra):
    r = queue_prompt(url, prompt, ws.client_id, **extra)
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


def test_events_history_and_view(server, socket_):
    prompt = {"1": {"class_type": "Const", "inputs": {"v": 1}}, "2": {"class_type": "Save", "inputs": {}}}
    pid = _ok(server.url, prompt, socket_)
    got = socket_.until_done(pid)
    kinds = [m[0] for m in got if isinstance(m, tuple) and m[0] not in ("status", "progress_state")]
    assert kinds == ["execution_start", "execution_cached", "executing", "executing", "executed",
                     "execution_success", "executing"]
    assert [e["node"] for e in events(got, "executing")] == ["1", "2", None]
    assert all(e["prompt_id"] == pid for e in events(got, "executing"))
    executed = events(got, "executed")[0]
    assert executed["node"] == "2" and executed["output"]["images"][0]["type"] == "output"
    # progress_state: every node's state so far, as the frontend draws node progress
    states = [{n: s["state"] for n, s in e["nodes"].items()} for e in events(got, "progress_state")]
    assert states == [{"1": "running"}, {"1": "finished"}, {"1": "finished", "2": "running"},
                      {"1": "finished", "2": "finished"}]

    # the history is there once "executing: null" arrives
    entry = requests.get(f"{server.url}/history/{pid}").json()[pid]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == pid and entry["prompt"][2] == prompt and entry["prompt"][4] == ["2"]
    assert entry["prompt"][3]["client_id"] == socket_.client_id
    image = entry["outputs"]["2"]["images"][0]
    r = requests.get(f"{server.url}/view", params=image)
    assert r.status_code == 200 and r.content == (server.root / "output" / image["filename"]).read_bytes()
    assert requests.get(f"{server.url}/api/history/{pid}").json() == {pid: entry}

    # the second run finds the Const node cached
    pid2 = _ok(server.url, prompt, socket_)
    got = socket_.until_done(pid2)
    assert events(got, "execution_cached")[0]["nodes"] == ["1"]
    assert [e["node"] for e in events(got, "executing")] == ["2", None]

    jobs = requests.get(f"{server.url}/api/jobs", params={"status": "completed,failed,cancelled"}).json()
    ours = {job["id"]: job for job in jobs["jobs"]}
    assert ours[pid]["status"] == "completed" and ours[pid]["outputs_count"] == 1
    assert ours[pid]["preview_output"]["filename"] == image["filename"] and ours[pid]["preview_output"]["nodeId"] == "2"
    assert jobs["pagination"]["total"] >= 2 and jobs["pagination"]["has_more"] is False
    detail = requests.get(f"{server.url}/api/jobs/{pid}").json()
    assert detail["outputs"] == entry["outputs"] and detail["workflow"]["prompt"] == prompt
    assert requests.get(f"{server.url}/api/jobs/nope").status_code == 404


def test_failing_node_then_next_prompt_runs(server, socket_):
    pid = _ok(server.url, {"1": {"class_type": "Const", "inputs": {"v": 2}}, "2": {"class_type": "Fail", "inputs": {}}},
              socket_)
    got = socket_.until_done(pid)
    error = events(got, "execution_error")[0]
    assert error["prompt_id"] == pid and error["node_id"] == "2" and error["node_type"] == "Fail"
    assert error["exception_message"] == "this node always fails" and error["exception_type"] == "ValueError"
    assert error["traceback"][-1] == "ValueError: always\n" and error["executed"] == ["1"]
    assert error["current_inputs"] == {"x": 1}
    last = events(got, "progress_state")[-1]["nodes"]
    assert last["1"]["state"] == "finished" and last["2"]["state"] == "error"
    entry = requests.get(f"{server.url}/history/{pid}").json()[pid]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    job = requests.get(f"{server.url}/api/jobs/{pid}").json()
    assert job["status"] == "failed" and job["execution_error"]["node_id"] == "2"

    pid2 = _ok(server.url, {"3": {"class_type": "Save", "inputs": {}}}, socket_)
    assert events(socket_.until_done(pid2), "execution_success")


def test_interrupt_within_one_step_and_preview_frames(server, socket_):
    pid = _ok(server.url, {"1": {"class_type": "Slow", "inputs": {"steps": 500, "delay": 0.02}}}, socket_,
              extra_data={"preview_method": "auto"})  # the frontend's "Live preview method" setting
    before = socket_.until(lambda m: isinstance(m, tuple) and m[0] == "progress")
    assert requests.post(f"{server.url}/interrupt", json={"prompt_id": "someone-else"}).status_code == 200
    assert requests.post(f"{server.url}/interrupt").status_code == 200
    after = socket_.until_done(pid)
    interrupted = events(after, "execution_interrupted")[0]
    assert interrupted["node_id"] == "1" and interrupted["node_type"] == "Slow" and interrupted["prompt_id"] == pid
    running = [e["nodes"]["1"] for e in events(before + after, "progress_state") if e["nodes"]["1"]["max"] == 500]
    assert running and running[-1]["state"] == "running" and running[-1]["value"] >= 1
    # the stand-in checks for an interrupt before each 20 ms step: only steps already under way still report
    assert len(events(after, "progress")) <= 3
    frames = [m for m in before + after if isinstance(m, bytes)]
    assert frames, "no preview frames"
    event_type, image_type = struct.unpack(">II", frames[0][:8])
    assert (event_type, image_type) == (1, 2)
    assert Image.open(io.BytesIO(frames[0][8:])).size == (8, 8)
    assert requests.get(f"{server.url}/api/jobs/{pid}").json()["status"] == "cancelled"


def test_queue_order_front_delete_and_clear(server, socket_):
    url = server.url
    blocker = _ok(url, {"1": {"class_type": "Slow", "inputs": {"steps": 40, "delay": 0.05}}}, socket_)
    socket_.until(lambda m: isinstance(m, tuple) and m[0] == "progress")
    a = _ok(url, {"1": {"class_type": "Save", "inputs": {"prefix": "a"}}}, socket_)
    b = _ok(url, {"1": {"class_type": "Save", "inputs": {"prefix": "b"}}}, socket_)
    c = _ok(url, {"1": {"class_type": "Save", "inputs": {"prefix": "c"}}}, socket_, front=True)
    q = requests.get(f"{url}/queue").json()
    assert [item[1] for item in q["queue_running"]] == [blocker]
    assert [item[1] for item in q["queue_pending"]] == [c, a, b]
    assert requests.get(f"{url}/prompt").json() == {"exec_info": {"queue_remaining": 4}}
    pending = requests.get(f"{url}/api/jobs", params={"status": "in_progress,pending"}).json()["jobs"]
    assert {j["id"]: j["status"] for j in pending} == {blocker: "in_progress", a: "pending", b: "pending", c: "pending"}
    assert requests.post(f"{url}/queue", json={"delete": [a]}).status_code == 200
    assert requests.post(f"{url}/api/jobs/cancel", json={"job_ids": [blocker]}).status_code == 200
    done = socket_.until_done(b)
    assert not [m for m in done if isinstance(m, bytes)], "previews sent with the server's default 'none'"
    finished = [e["prompt_id"] for e in events(done, "executing") if e["node"] is None]
    assert finished == [blocker, c, b]
    assert not requests.get(f"{url}/history/{a}").json()
    # status events tell the queue length as it drains
    assert events(done, "status")[-1]["status"]["exec_info"]["queue_remaining"] == 0

    requests.post(f"{url}/history", json={"delete": [c]})
    assert not requests.get(f"{url}/history/{c}").json() and requests.get(f"{url}/history/{b}").json()
    assert len(requests.get(f"{url}/history", params={"max_items": 1}).json()) == 1
    requests.post(f"{url}/history", json={"clear": True})
    assert requests.get(f"{url}/history").json() == {}
    # clearing the queue drops pending prompts only
    slow = _ok(url, {"1": {"class_type": "Slow", "inputs": {"steps": 40, "delay": 0.05}}}, socket_)
    socket_.until(lambda m: isinstance(m, tuple) and m[0] == "progress")
    _ok(url, {"1": {"class_type": "Save", "inputs": {}}}, socket_)
    requests.post(f"{url}/queue", json={"clear": True})
    assert requests.get(f"{url}/queue").json()["queue_pending"] == []
    requests.post(f"{url}/interrupt", json={"prompt_id": slow})
    socket_.until_done(slow)


def test_bad_requests_are_answered_and_the_server_lives(server):
    url = server.url
    r = requests.post(f"{url}/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["class_type"] == "Nope"
    r = requests.post(f"{url}/prompt", json={"no": "prompt"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "no_prompt"
    r = requests.post(f"{url}/prompt", json={"prompt": ["not", "a", "dict"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_prompt"
    r = requests.post(f"{url}/api/prompt", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    assert requests.get(f"{url}/history", params={"max_items": "x"}).status_code == 400
    assert requests.get(f"{url}/api/jobs", params={"status": "weird"}).status_code == 400
    for route, body in [("/queue", [1]), ("/history", {"delete": "abc"}), ("/settings", [1]),
                        ("/api/jobs/cancel", {"job_ids": 3}), ("/interrupt", "nope"), ("/prompt", {"prompt": {}, "number": "x"}),
                        ("/prompt", {"prompt": {}, "extra_data": [1]})]:
        r = requests.post(url + route, json=body)
        assert r.status_code == 400 and r.json()["error"]["type"] in ("invalid_json", "invalid_prompt"), route
    assert requests.get(f"{url}/system_stats").json()["devices"]


def test_view_refuses_paths_outside_the_folders(server):
    (server.root / "secret.txt").write_text("secret")
    (server.root / "output" / "ok.png").write_bytes(b"png")
    url = f"{server.url}/view"
    assert requests.get(url, params={"filename": "ok.png"}).content == b"png"
    assert requests.get(url, params={"filename": "ok.png [output]", "type": "input"}).content == b"png"
    for params, status in [({"filename": "../secret.txt"}, 400), ({"filename": "/etc/passwd"}, 400),
                           ({"filename": "..\\secret.txt"}, 400),
                           ({"filename": "secret.txt", "subfolder": ".."}, 403),
                           ({"filename": "passwd", "subfolder": "/etc"}, 403),
                           ({"filename": "secret.txt", "subfolder": "../output/.."}, 403),
                           ({"filename": "ok.png", "type": "models"}, 400),
                           ({"filename": "missing.png"}, 404)]:
        r = requests.get(url, params=params)
        assert r.status_code == status, (params, r.status_code)
        assert b"secret" not in r.content


def test_upload_image_and_mask(server):
    url = server.url
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(buf, format="PNG")
    first = requests.post(f"{url}/upload/image", files={"image": ("pic.png", buf.getvalue(), "image/png")}).json()
    assert first == {"name": "pic.png", "subfolder": "", "type": "input"}
    again = requests.post(f"{url}/api/upload/image", files={"image": ("pic.png", buf.getvalue())}).json()
    assert again["name"] == "pic.png"  # same bytes: the existing file
    other = io.BytesIO()
    Image.new("RGB", (6, 6), (9, 9, 9)).save(other, format="PNG")
    renamed = requests.post(f"{url}/upload/image", files={"image": ("pic.png", other.getvalue())}).json()
    assert renamed["name"] == "pic (1).png"
    r = requests.get(f"{url}/view", params={"filename": "pic.png", "type": "input"})
    assert r.content == buf.getvalue()
    bad = requests.post(f"{url}/upload/image", files={"image": ("x.png", b"x")}, data={"subfolder": "../../"})
    assert bad.status_code == 400
    mask = io.BytesIO()
    Image.new("RGBA", (6, 6), (0, 0, 0, 77)).save(mask, format="PNG")
    ref = '{"filename": "pic.png", "subfolder": "", "type": "input"}'
    out = requests.post(f"{url}/upload/mask", files={"image": ("clipspace-mask.png", mask.getvalue())},
                        data={"original_ref": ref, "type": "input"}).json()
    merged = Image.open(server.root / "input" / out["name"])
    assert merged.mode == "RGBA" and merged.getpixel((0, 0)) == (1, 2, 3, 77)


def test_settings_and_userdata(server):
    url = f"{server.url}/api"
    assert requests.get(f"{url}/users").json()["storage"] == "server"
    assert requests.post(f"{url}/settings", json={"Comfy.A": 1, "Comfy.B": "x"}).status_code == 200
    assert requests.post(f"{url}/settings/Comfy.A", json=2).status_code == 200
    assert requests.get(f"{url}/settings").json() == {"Comfy.A": 2, "Comfy.B": "x"}
    assert requests.get(f"{url}/settings/Comfy.B").json() == "x"
    assert requests.get(f"{url}/settings/Comfy.Missing").json() is None

    wf = "workflows%2Fmy%20flow.json"
    r = requests.post(f"{url}/userdata/{wf}?overwrite=false&full_info=true", data=b'{"nodes": []}')
    assert r.status_code == 200 and r.json()["path"] == "workflows/my flow.json"
    assert requests.post(f"{url}/userdata/{wf}?overwrite=false", data=b"{}").status_code == 409
    got = requests.get(f"{url}/userdata/{wf}")
    assert got.content == b'{"nodes": []}' and got.headers["Content-Disposition"] == "attachment"
    listing = requests.get(f"{url}/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true",
                                                      "split": "false"}).json()
    assert [e["path"] for e in listing] == ["my flow.json"]
    v2 = requests.get(f"{url}/v2/userdata").json()
    assert {e["path"] for e in v2} >= {"workflows", "workflows/my flow.json"}
    moved = requests.post(f"{url}/userdata/{wf}/move/workflows%2Frenamed.json")
    assert moved.json() == "workflows/renamed.json"
    assert requests.delete(f"{url}/userdata/workflows%2Frenamed.json").status_code == 204
    assert requests.get(f"{url}/userdata/workflows%2Frenamed.json").status_code == 404
    (server.root / "outside.json").write_text("{}")
    assert requests.get(f"{url}/userdata/..%2F..%2Foutside.json").status_code == 403
    assert requests.post(f"{url}/userdata/..%2F..%2Fevil.json", data=b"x").status_code == 403
    assert not (server.root / "evil.json").exists()
    assert requests.get(f"{url}/userdata", params={"dir": "../.."}).status_code == 403


def test_empty_answers_origin_check_and_install_page(server):
    url = server.url
    assert requests.get(f"{url}/embeddings").json() == []
    assert requests.get(f"{url}/api/i18n").json() == {}
    assert requests.get(f"{url}/api/workflow_templates").json() == {}
    assert requests.get(f"{url}/api/extensions").json() == []  # no frontend in this app
    assert requests.get(f"{url}/api/features").json()["max_upload_size"] > 0
    info = requests.get(f"{url}/object_info").json()
    assert set(info) == set(NODES)
    assert requests.get(f"{url}/object_info/Save").json() == {"Save": info["Save"]}
    assert requests.get(f"{url}/object_info/Nope").json() == {}
    page = requests.get(url + "/")
    assert page.status_code == 200 and "pip install diffblocks[ui]" in page.text
    # a web page elsewhere cannot post to the loopback server; the server's own origin can
    evil = requests.post(f"{url}/prompt", json={"prompt": {}}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    same = requests.post(f"{url}/queue", json={}, headers={"Origin": url})
    assert same.status_code == 200


def test_feature_flags_answered_on_the_socket(server, socket_):
    socket_.ws.send('{"type": "feature_flags", "data": {"supports_preview_metadata": true}}')
    kind, data = socket_.until(lambda m: isinstance(m, tuple) and m[0] == "feature_flags")[-1]
    assert data["supports_preview_metadata"] is False


def test_logs_for_the_console_panel(server, socket_):
    import logging

    logging.getLogger("diffblocks.test_server_http").warning("a line for the console panel")
    assert "a line for the console panel" in requests.get(f"{server.url}/internal/logs").text
    raw = requests.get(f"{server.url}/internal/logs/raw").json()
    assert raw["entries"][-1]["m"].endswith("a line for the console panel\n") and raw["size"]["cols"] > 0
    r = requests.patch(f"{server.url}/internal/logs/subscribe", json={"clientId": socket_.client_id, "enabled": True})
    assert r.status_code == 200
    logging.getLogger("diffblocks.test_server_http").warning("a live line")
    kind, data = socket_.until(lambda m: isinstance(m, tuple) and m[0] == "logs")[-1]
    assert data["entries"][0]["m"].endswith("a live line\n")
    requests.patch(f"{server.url}/internal/logs/subscribe", json={"clientId": socket_.client_id, "enabled": False})


def test_serve_refuses_a_missing_models_folder(tmp_path, capsys):
    from diffblocks.cli import main

    assert main(["serve", "--models", str(tmp_path / "nope"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "--models" in err and "nope" in err and "no such folder" in err


def test_partial_execution_targets_run_only_those_outputs(server, socket_):
    prompt = {"1": {"class_type": "Save", "inputs": {"prefix": "one"}},
              "2": {"class_type": "Save", "inputs": {"prefix": "two"}}}
    pid = _ok(server.url, prompt, socket_, partial_execution_targets=["2"])
    got = socket_.until_done(pid)
    assert [e["node"] for e in events(got, "executed")] == ["2"]
    assert requests.get(f"{server.url}/queue").json()["queue_pending"] == []
    r = queue_prompt(server.url, {**prompt, "3": {"class_type": "Const", "inputs": {}}}, socket_.client_id,
                     partial_execution_targets=["3"])
    assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"


def test_docs_embedding_example_serves(tmp_path, monkeypatch):
    """docs/server.md's embedding example, as written, with `web.run_app` swapped for a served thread."""
    import re
    from pathlib import Path

    from aiohttp import web

    doc = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "create_app" in block]
    answers = {}

    def run_app(app, host, port):
        assert host == "127.0.0.1"
        served = AppThread(app)
        try:
            answers["object_info"] = requests.get(f"{served.url}/object_info").json()
            answers["prompt"] = requests.get(f"{served.url}/prompt").json()
        finally:
            served.close()

    monkeypatch.setattr(web, "run_app", run_app)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    exec(compile(code, "docs/server.md", "exec"), {})
    assert "KSampler" in answers["object_info"] and answers["prompt"] == {"exec_info": {"queue_remaining": 0}}


def test_frontend_files_and_unanswered_api_paths(tmp_path, caplog):
    """With a frontend folder: / is its index.html, its files are served, and an API path nobody answers is a
    404 that the log names (how the browser test finds frontend calls this server lacks)."""
    web_root = tmp_path / "web"
    (web_root / "extensions" / "core").mkdir(parents=True)
    (web_root / "index.html").write_text("<html>frontend</html>")
    (web_root / "extensions" / "core" / "a.js").write_text("// a")
    app = create_app(StandInEngine(tmp_path), models_dir=tmp_path, input_dir=tmp_path / "in",
                     output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", user_dir=tmp_path / "user",
                     web_root=web_root)
    served = AppThread(app)
    try:
        assert requests.get(served.url + "/").text == "<html>frontend</html>"
        assert requests.get(served.url + "/extensions/core/a.js").text == "// a"
        assert requests.get(served.url + "/api/extensions").json() == ["/extensions/core/a.js"]
        with caplog.at_level("WARNING", logger="diffblocks.server.app"):
            assert requests.get(served.url + "/api/no/such/route").status_code == 404
        assert "no route for GET /api/no/such/route" in caplog.text
    finally:
        served.close()
