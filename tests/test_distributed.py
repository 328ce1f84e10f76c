"""Generation across processes: `diffblocks generate --prompts-file` under torchrun and accelerate launch (2 CPU
processes, gloo), and docs/distributed.md's two examples (Accelerate's split_between_processes, torch.distributed
+ mp.spawn).

Every image drawn by two processes must equal the single-process Python API result for the same prompt and
seed; a process that dies must leave a summary naming the prompts it lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_sd import build_sd15
from PIL import Image

from diffblocks import ModularPipeline
from diffblocks.runtime.distributed import PromptEntry, generate_batch, image_seed, plan_images, read_prompts

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cat", "a blue dog", "a green fox on a hill", "a cat", "the end"]
DOC_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread, like the launched processes: the thread count changes float summation order (and with it
    the last bit of some pixels), and exact equality is what is checked here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("distributed-sd"))


@pytest.fixture(scope="module")
def pipe(sd15):
    pipe = ModularPipeline.from_pretrained(str(sd15))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"  # one thread per process on a 2-core machine
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _accelerate_launch(*args: str) -> list[str]:
    """`accelerate launch` with 2 processes; --multi_gpu starts its torch.distributed launcher, which also starts
    CPU processes on a machine without GPUs."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *args]


TIMEOUT = 600  # seconds; generous because the CI machines are shared, but a hang still ends


def _launch(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a launcher in its own session, so `_stop` can end it together with every worker it started
    (killing only the launcher would leave its workers waiting forever for the rendezvous)."""
    return subprocess.Popen(cmd, cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    process = _launch(cmd, cwd, env)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(process)
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish within {TIMEOUT} s")
    finally:
        _stop(process)  # workers a failed launcher left behind
    return subprocess.CompletedProcess(cmd, process.returncode, output, output)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _expected(pipe, prompt: str, seed: int, **kwargs) -> np.ndarray:
    """The single-process Python API image for this prompt and seed."""
    image = pipe(prompt=prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                 output="images", **kwargs)[0]
    return np.asarray(image.convert("RGB"))


def test_seeds_depend_only_on_base_prompt_and_image_index():
    assert image_seed(3, 1, 0) == image_seed(3, 1, 0)
    assert len({image_seed(3, p, i) for p in range(20) for i in range(5)}) == 100
    assert image_seed(3, 1, 0) != image_seed(4, 1, 0)
    prompts = [PromptEntry(i, p) for i, p in enumerate(PROMPTS)]
    two = plan_images(prompts, 2, 3)
    assert [job.seed for job in plan_images(prompts, 1, 3)] == [job.seed for job in two if job.image_index == 0]
    with pytest.raises(ValueError, match="base seed must be a non-negative integer"):
        image_seed(-1, 0, 0)
    with pytest.raises(ValueError, match="images_per_prompt must be a positive integer"):
        plan_images(prompts, 0)


def test_prompts_file_formats_and_errors(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\n  a dog  \n")
    assert [(p.index, p.prompt) for p in read_prompts(text)] == [(0, "a cat"), (1, "a dog")]
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "a cat", "guidance_scale": 5.0}\n\n{"prompt": "a dog"}\n')
    entries = read_prompts(lines)
    assert entries[0].inputs == {"guidance_scale": 5.0} and entries[1].inputs == {} and entries[1].index == 1
    lines.write_text('{"prompt": "a cat"}\n{"text": "a dog"}\n')
    with pytest.raises(ValueError, match=r'line 2: expected an object with a "prompt" string'):
        read_prompts(lines)
    lines.write_text('{"prompt": "a cat", "generator": 3}\n')
    with pytest.raises(ValueError, match=r"line 1: \['generator'\] cannot be set per prompt"):
        read_prompts(lines)
    lines.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        read_prompts(lines)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_two_processes_match_single_process(sd15, pipe, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    result = _run(_torchrun("-m", "diffblocks", "generate", "--model", str(sd15), "--prompts-file", str(prompts),
                            "--out-dir", str(out), "--steps", "2", "--seed", "3", "--quiet"), tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Wrote 5 of 5 image(s) with 2 process(es)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 2 and not summary["lost"]
    assert not (out / ".ranks").exists()  # per-process logs removed after a complete run
    images = summary["images"]
    assert [(e["index"], e["image_index"]) for e in images] == [(p, 0) for p in range(5)]
    assert [e["rank"] for e in images] == [0, 0, 0, 1, 1]  # split_between_processes: contiguous chunks
    for entry in images:
        assert entry["prompt"] == PROMPTS[entry["index"]]
        assert entry["seed"] == image_seed(3, entry["index"], entry["image_index"])
        expected = _expected(pipe, entry["prompt"], entry["seed"])
        assert np.array_equal(_pixels(out / entry["file"]), expected), entry


def test_single_process_per_prompt_inputs_and_lost_prompts(pipe, tmp_path, caplog):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red cat"}\n{"prompt": "a dog", "height": 20}\n'
                       '{"prompt": "a fox", "guidance_scale": 5.0}\n')
    out = tmp_path / "out"
    result = generate_batch(lambda device: pipe, prompts, out, images_per_prompt=2, seed=5,
                            call_kwargs={"num_inference_steps": 2}, progress=False)
    assert result.rank == 0 and result.world_size == 1 and result.exit_code == 1
    summary = result.summary
    assert summary == json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["lost_prompts"] == [1]
    assert [(e["index"], e["image_index"]) for e in summary["lost"]] == [(1, 0), (1, 1)]
    for lost in summary["lost"]:
        assert lost["prompt"] == "a dog" and lost["rank"] == 0
        assert "height and width must be multiples of 8" in lost["reason"]
    assert "prompt(s) [1]" in caplog.text
    drawn = {(e["index"], e["image_index"]): e for e in summary["images"]}
    assert sorted(drawn) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    for (index, image_index), entry in drawn.items():
        assert entry["seed"] == image_seed(5, index, image_index)
        extra = {"guidance_scale": 5.0} if index == 2 else {}
        assert np.array_equal(_pixels(out / entry["file"]), _expected(pipe, entry["prompt"], entry["seed"], **extra))
    assert (out / ".ranks" / "rank-00000.jsonl").is_file()  # kept when something was lost


def test_cli_prompts_file_argument_errors(sd15, tmp_path):
    from diffblocks.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    with pytest.raises(SystemExit, match="either --prompt or --prompts-file"):
        main(["generate", "--model", str(sd15), "--prompt", "a", "--prompts-file", str(prompts)])
    with pytest.raises(SystemExit, match="needs --out-dir"):
        main(["generate", "--model", str(sd15), "--prompts-file", str(prompts)])
    with pytest.raises(SystemExit, match="use --images-per-prompt"):
        main(["generate", "--model", str(sd15), "--prompts-file", str(prompts), "--num-images", "2",
              "--out-dir", str(tmp_path)])


def test_cli_single_process_with_pipeline_options(sd15, pipe, tmp_path):
    from diffblocks.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\na dog\n")
    out = tmp_path / "out"
    assert main(["generate", "--model", str(sd15), "--prompts-file", str(prompts), "--out-dir", str(out), "--steps",
                 "2", "--seed", "4", "--device", "cpu", "--dtype", "fp32", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["world_size"] == 1
    for entry in summary["images"]:
        assert np.array_equal(_pixels(out / entry["file"]), _expected(pipe, entry["prompt"], image_seed(4, entry["index"], 0)))


def test_killed_process_reports_lost_prompts(sd15, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    launcher = _launch(  # under `accelerate launch` (the other test uses torchrun)
        _accelerate_launch("-m", "diffblocks", "generate", "--model", str(sd15), "--prompts-file", str(prompts),
                           "--out-dir", str(out), "--steps", "2", "--quiet"), tmp_path)
    log = out / ".ranks" / "rank-00001.jsonl"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (log.is_file() and log.read_text().strip()):
            assert launcher.poll() is None and time.monotonic() < deadline, "rank 1 never started"
            time.sleep(0.05)
        start = json.loads(log.read_text().splitlines()[0])
        assert start["event"] == "start" and start["images"] == [[3, 0], [4, 0]]
        os.kill(start["pid"], signal.SIGKILL)  # as the out-of-memory killer would
        output, _ = launcher.communicate(timeout=TIMEOUT)
    finally:
        _stop(launcher)
    assert launcher.returncode != 0
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["complete"] and summary["world_size"] == 2
    lost = {entry["index"]: entry for entry in summary["lost"]}
    assert {3, 4} <= set(lost) and {3, 4} <= set(summary["lost_prompts"])
    for index in (3, 4):
        assert lost[index]["rank"] == 1 and "died or was killed" in lost[index]["reason"]
    drawn = {entry["index"] for entry in summary["images"]}
    assert drawn | set(lost) == set(range(5)) and not drawn & set(lost)
    for entry in summary["images"]:  # what rank 0 finished before the launcher stopped it is on disk
        assert (out / entry["file"]).is_file()
    assert "lost" in output.lower()


# -- docs/distributed.md ------------------------------------------------------------------------------------------
def _doc_examples() -> dict[str, str]:
    text = (ROOT / "docs" / "distributed.md").read_text()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```py\n(.*?)```", text, flags=re.S))


def _example(name: str, sd15: Path, tmp_path: Path) -> Path:
    code = _doc_examples()[name]
    # the only edits: the tiny test model instead of the Hub repo, and 2 denoising steps to stay fast
    assert code.count(DOC_MODEL) == 1 and code.count('output="images")') == 1
    code = code.replace(DOC_MODEL, str(sd15)).replace('output="images")', 'output="images", num_inference_steps=2)')
    path = tmp_path / name
    path.write_text(code)
    return path


def test_doc_has_both_examples():
    assert set(_doc_examples()) == {"run_accelerate.py", "run_spawn.py"}


def test_doc_accelerate_example_two_processes(sd15, tmp_path):
    script = _example("run_accelerate.py", sd15, tmp_path)
    result = _run(_accelerate_launch(str(script)), tmp_path)  # the doc's launcher
    assert result.returncode == 0, result.stdout[-4000:]
    # one prompt per process: each wrote its own file (without a process group both would be process 0)
    first, second = _pixels(tmp_path / "result_0.png"), _pixels(tmp_path / "result_1.png")
    assert first.shape == second.shape == (32, 32, 3) and not np.array_equal(first, second)


def test_doc_spawn_example_two_processes(sd15, tmp_path):
    script = _example("run_spawn.py", sd15, tmp_path)
    result = _run([sys.executable, str(script)], tmp_path, env={**_env(), "MASTER_PORT": str(_free_port())})
    assert result.returncode == 0, result.stdout[-4000:]
    dog, cat = _pixels(tmp_path / "a_dog.png"), _pixels(tmp_path / "a_cat.png")
    assert dog.shape == cat.shape == (32, 32, 3) and not np.array_equal(dog, cat)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
