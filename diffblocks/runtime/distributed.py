"""Batch generation across processes: prompts from a file, split over the ranks of `torchrun` / `accelerate launch`.

Every image is seeded from (base seed, prompt index, image index) alone (`image_seed`), and each image is one
pipeline call with its own CPU generator, so an image is the same whether one process or eight drew it.

Each rank appends one JSON line per image to its own log, ``OUT_DIR/.ranks/rank-<R>.jsonl`` (written as it goes,
so it survives a crash). When every rank is done, rank 0 alone writes ``OUT_DIR/summary.json`` from those logs:
each image written (prompt, prompt index, image index, seed, file, rank) and each image lost with the rank and
the reason (an exception, a failed model load, a signal, or a process that died without reporting). A rank
that loses images returns a non-zero exit code, so the launcher reports the failure too; ranks synchronise
before exiting, so that exit cannot cut rank 0 off before the summary is written.

Across machines, OUT_DIR must be a shared folder (the logs and images are files).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "BatchResult",
    "ImageJob",
    "PromptEntry",
    "generate_batch",
    "image_seed",
    "plan_images",
    "read_prompts",
]

SUMMARY_NAME = "summary.json"
RANK_LOG_DIR = ".ranks"
# pipeline inputs a prompts file may not set per prompt: seeding and batching are the batch runner's job
RESERVED_INPUTS = frozenset({"generator", "num_images_per_prompt", "output", "state", "trace", "latents"})


@dataclass(frozen=True)
class PromptEntry:
    """One prompt of a prompts file: its 0-based index, the text and extra pipeline inputs (from a .jsonl line)."""

    index: int
    prompt: str
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageJob:
    """One image to draw: which prompt, which of its images, the seed and the file (relative to the out dir)."""

    prompt_index: int
    image_index: int
    prompt: str
    seed: int
    file: str


@dataclass
class BatchResult:
    """What one rank did. `summary` is the written summary on rank 0 (None on the other ranks)."""

    rank: int
    world_size: int
    written: list[ImageJob]
    lost: list[tuple[ImageJob, str]]
    summary: dict[str, Any] | None = None
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 when nothing was lost (on rank 0: in the whole job), 1 otherwise (130 after a signal)."""
        if self.interrupted:
            return 130
        if self.summary is not None:
            return 0 if self.summary["complete"] else 1
        return 0 if not self.lost else 1


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image `image_index` of prompt `prompt_index`: a 32-bit value drawn by numpy's SeedSequence
    from the three numbers, so it depends on nothing else (not the process count, not images per prompt)."""
    import numpy as np

    for name, value in (("base seed", base_seed), ("prompt index", prompt_index), ("image index", image_index)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"image_seed: the {name} must be a non-negative integer, got {value!r}")
    return int(np.random.SeedSequence([base_seed, prompt_index, image_index]).generate_state(1, dtype=np.uint32)[0])


def read_prompts(path: str | os.PathLike) -> list[PromptEntry]:
    """Prompts from a file: ``.jsonl`` holds one JSON object per line with a ``"prompt"`` string and optionally
    other pipeline inputs for that prompt (``{"prompt": "a cat", "guidance_scale": 5.0}``); any other file
    holds one prompt per line. Blank lines are skipped; indices count the prompts, from 0."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist (one prompt per line, or .jsonl)")
    lines = path.read_text(encoding="utf-8").splitlines()
    entries: list[PromptEntry] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix.lower() != ".jsonl":
            entries.append(PromptEntry(len(entries), line.strip()))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"prompts file {path}, line {number}: not valid JSON ({exc.msg}); each line of a "
                             f".jsonl prompts file is an object such as {{\"prompt\": \"a cat\"}}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"prompts file {path}, line {number}: expected an object with a \"prompt\" string, "
                             f"got {line.strip()[:80]!r}")
        inputs = {k: v for k, v in record.items() if k != "prompt"}
        reserved = sorted(RESERVED_INPUTS & set(inputs))
        if reserved:
            raise ValueError(f"prompts file {path}, line {number}: {reserved} cannot be set per prompt (each image "
                             f"is seeded from the base seed, prompt index and image index; use --images-per-prompt)")
        entries.append(PromptEntry(len(entries), record["prompt"], inputs))
    if not entries:
        raise ValueError(f"prompts file {path} holds no prompts")
    return entries


def plan_images(prompts: Sequence[PromptEntry], images_per_prompt: int = 1, base_seed: int = 0) -> list[ImageJob]:
    """Every image of the batch, in (prompt index, image index) order, with its seed and file name."""
    if not isinstance(images_per_prompt, int) or images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be a positive integer, got {images_per_prompt!r}")
    return [ImageJob(p.index, i, p.prompt, image_seed(base_seed, p.index, i), f"{p.index:05d}-{i:03d}.png")
            for p in prompts for i in range(images_per_prompt)]


# -- process group ------------------------------------------------------------------------------------------------
class _Interrupted(BaseException):
    """Raised by the SIGTERM handler (the launcher stops the other ranks when one dies)."""


class _SignalGuard:
    """SIGTERM (what torchrun sends the other ranks when one dies) raises `_Interrupted` while `raising`;
    afterwards it is only remembered, so rank 0 finishes writing the summary."""

    def __init__(self) -> None:
        self.raising = True
        self.received: str | None = None
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        if self.raising:
            raise _Interrupted(f"signal {self.received}")

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Group:
    """Rank, world size, device and a CPU barrier (gloo) that fails fast when a peer dies."""

    def __init__(self, device: Any = None) -> None:
        import torch
        from accelerate import PartialState

        wanted = torch.device(device) if device is not None else None
        cpu = (wanted is not None and wanted.type == "cpu") or (wanted is None and not torch.cuda.is_available())
        # accelerate only sets up a CPU process group (gloo) when asked for the CPU explicitly
        self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index
        self.world_size = self.state.num_processes
        if self.world_size > 1:
            self.device = self.state.device  # one device per rank: the local rank's GPU, or the CPU
        else:
            self.device = wanted or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._barrier_group = None
        if self.world_size > 1 and torch.distributed.get_backend() != "gloo":
            # NCCL barriers hang when a peer dies; a gloo group raises at once, so rank 0 can still report
            self._barrier_group = torch.distributed.new_group(backend="gloo")

    def barrier(self) -> bool:
        """Wait for every rank; False when a peer is gone (its images are then reported lost)."""
        if self.world_size == 1:
            return True
        import torch

        try:
            torch.distributed.barrier(group=self._barrier_group)
            return True
        except RuntimeError as exc:
            logger.error("rank %d: another process stopped without reaching the barrier: %s", self.rank, exc)
            return False


# -- per-rank log and the summary ---------------------------------------------------------------------------------
class _RankLog:
    def __init__(self, out_dir: Path, rank: int) -> None:
        directory = out_dir / RANK_LOG_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"rank-{rank:05d}.jsonl"
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (kept open for the whole run)

    def write(self, **record: Any) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _reason(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _read_rank_logs(out_dir: Path, world_size: int) -> dict[int, list[dict[str, Any]]]:
    logs: dict[int, list[dict[str, Any]]] = {}
    for rank in range(world_size):
        path = out_dir / RANK_LOG_DIR / f"rank-{rank:05d}.jsonl"
        if not path.is_file():
            continue
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                break
        logs[rank] = records
    return logs


def _summarise(plan: list[ImageJob], out_dir: Path, world_size: int, meta: dict[str, Any]) -> dict[str, Any]:
    logs = _read_rank_logs(out_dir, world_size)
    owner: dict[tuple[int, int], int] = {}
    done: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    failed: dict[tuple[int, int], tuple[int, str]] = {}
    ended: set[int] = set()
    for rank, records in logs.items():
        for record in records:
            event = record.get("event")
            if event == "start":
                owner.update({(p, i): rank for p, i in record["images"]})
            elif event == "image":
                done[(record["index"], record["image_index"])] = (rank, record)
            elif event == "lost":
                failed[(record["index"], record["image_index"])] = (rank, record["reason"])
            elif event == "end":
                ended.add(rank)
    images, lost = [], []
    for job in plan:
        key = (job.prompt_index, job.image_index)
        entry = {"prompt": job.prompt, "index": job.prompt_index, "image_index": job.image_index, "seed": job.seed}
        if key in done:
            rank, record = done[key]
            images.append({**entry, "file": record["file"], "rank": rank, "seconds": record["seconds"]})
            continue
        if key in failed:
            rank, reason = failed[key]
        elif key in owner:
            rank = owner[key]
            reason = (f"rank {rank} stopped before drawing this image (the process died or was killed)"
                      if rank not in ended else f"rank {rank} finished without reporting this image")
        else:
            rank, reason = None, "no process reported holding this image (its rank died before starting)"
        lost.append({**entry, "rank": rank, "reason": reason})
    lost_prompts = sorted({item["index"] for item in lost})
    return {**meta, "world_size": world_size, "complete": not lost, "num_images": len(plan),
            "images": images, "lost": lost, "lost_prompts": lost_prompts}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- the batch ----------------------------------------------------------------------------------------------------
def _load_pipeline(model: Any, device: Any, dtype: Any) -> Any:
    import torch

    from .pipeline import ModularPipeline

    if callable(model) and not isinstance(model, (str, os.PathLike)):
        return model(device)
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    pipe = ModularPipeline.from_pretrained(str(model))
    pipe.load_components(torch_dtype=dtype, device=device)  # straight from the mapped files onto the device
    return pipe


def generate_batch(
    model: str | os.PathLike | Callable[[Any], Any],
    prompts: str | os.PathLike | Sequence[str | PromptEntry],
    out_dir: str | os.PathLike,
    *,
    images_per_prompt: int = 1,
    seed: int = 0,
    call_kwargs: dict[str, Any] | None = None,
    device: Any = None,
    torch_dtype: Any = None,
    progress: bool = True,
) -> BatchResult:
    """Draw `images_per_prompt` images for each prompt, spread over the processes of the current launch.

    Run it in every process started by `torchrun` / `accelerate launch` (or in a single process). `model` is
    a model folder / repo id (loaded once per rank onto the rank's device, fp16 on CUDA and fp32 on the CPU
    unless `torch_dtype` is given) or a callable `device -> pipeline`. `prompts` is a prompts file (see
    `read_prompts`) or a list of prompts. The prompts are split between the ranks with accelerate's
    `split_between_processes`; image i of prompt p is one call with `torch.Generator().manual_seed(image_seed(seed,
    p, i))`, saved as ``OUT_DIR/<p:05d>-<i:03d>.png``. Rank 0 writes ``OUT_DIR/summary.json``.
    """
    out = Path(out_dir)
    if isinstance(prompts, (str, os.PathLike)):
        prompts_source: str | None = str(prompts)
        entries = read_prompts(prompts)
    else:
        prompts_source = None
        entries = [p if isinstance(p, PromptEntry) else PromptEntry(i, str(p)) for i, p in enumerate(prompts)]
        if not entries:
            raise ValueError("generate_batch: no prompts given")
    plan = plan_images(entries, images_per_prompt, seed)
    group = _Group(device)
    out.mkdir(parents=True, exist_ok=True)
    with group.state.split_between_processes([p.index for p in entries]) as my_prompts:
        my_prompts = set(my_prompts)
    run = _RankRun(group, out, [job for job in plan if job.prompt_index in my_prompts],
                   {p.index: p.inputs for p in entries}, call_kwargs or {})
    with _SignalGuard() as guard:
        try:
            run.load(model, torch_dtype)
            run.draw(progress)
        except (_Interrupted, KeyboardInterrupt) as exc:
            run.interrupted = True
            run.lose_rest(f"rank {group.rank} was interrupted ({exc or 'KeyboardInterrupt'}) before drawing this image")
        guard.raising = False
        run.finish()
        # everyone done (an interrupted rank does not wait: the launcher is stopping its peers too)
        together = not run.interrupted and group.barrier()
        summary = None
        if group.rank == 0:
            meta = {"model": str(model) if isinstance(model, (str, os.PathLike)) else repr(model),
                    "prompts_file": prompts_source, "base_seed": seed, "images_per_prompt": images_per_prompt,
                    "seed_rule": "numpy.random.SeedSequence([base_seed, index, image_index]).generate_state(1)[0]"}
            summary = _summarise(plan, out, group.world_size, meta)
            _write_json(out / SUMMARY_NAME, summary)
            if summary["lost"]:
                logger.error("summary %s: %d of %d image(s) lost, prompt(s) %s", out / SUMMARY_NAME,
                             len(summary["lost"]), len(plan), summary["lost_prompts"])
        # nobody exits (possibly non-zero, which makes the launcher stop the rest) before the summary is written
        if together and group.barrier() and group.rank == 0 and summary["complete"]:
            shutil.rmtree(out / RANK_LOG_DIR, ignore_errors=True)
        run.interrupted = run.interrupted or guard.received is not None
    return BatchResult(group.rank, group.world_size, run.written, run.lost, summary, run.interrupted)


class _RankRun:
    """This rank's share of the batch: loads the pipeline once, draws each image, logs every outcome."""

    def __init__(self, group: _Group, out: Path, jobs: list[ImageJob], inputs_of: dict[int, dict[str, Any]],
                 call_kwargs: dict[str, Any]) -> None:
        self.group, self.out, self.inputs_of, self.call_kwargs = group, out, inputs_of, call_kwargs
        self.pending = list(jobs)
        self.written: list[ImageJob] = []
        self.lost: list[tuple[ImageJob, str]] = []
        self.interrupted = False
        self.pipe: Any = None
        self.log = _RankLog(out, group.rank)
        self.log.write(event="start", rank=group.rank, world_size=group.world_size, pid=os.getpid(),
                       host=socket.gethostname(), device=str(group.device),
                       images=[[job.prompt_index, job.image_index] for job in jobs])

    def _lose(self, job: ImageJob, reason: str) -> None:
        self.lost.append((job, reason))
        self.log.write(event="lost", index=job.prompt_index, image_index=job.image_index, reason=reason)

    def lose_rest(self, reason: str) -> None:
        if self.pending:
            logger.error("rank %d: %d image(s) not drawn: %s", self.group.rank, len(self.pending), reason)
        for job in self.pending:
            self._lose(job, reason)
        self.pending = []

    def load(self, model: Any, torch_dtype: Any) -> None:
        if not self.pending:
            return
        try:
            self.pipe = _load_pipeline(model, self.group.device, torch_dtype)
        except Exception as exc:
            self.lose_rest(f"loading the model failed on rank {self.group.rank}: {_reason(exc)}")
            return
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)  # one bar per rank over its images instead

    def draw(self, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        with tqdm(total=len(self.pending), desc=f"rank {self.group.rank}", position=self.group.rank,
                  disable=not progress or not self.pending) as bar:
            while self.pending:
                job = self.pending[0]
                kwargs = {**self.call_kwargs, **self.inputs_of.get(job.prompt_index, {})}
                start = time.perf_counter()
                try:
                    images = self.pipe(prompt=job.prompt, generator=torch.Generator().manual_seed(job.seed),
                                       output="images", **kwargs)
                    images[0].save(self.out / job.file)
                except Exception as exc:
                    self.pending.pop(0)
                    reason = f"rank {self.group.rank}: {_reason(exc)}"
                    logger.error("prompt %d image %d lost: %s", job.prompt_index, job.image_index, reason)
                    self._lose(job, reason)
                else:
                    self.pending.pop(0)
                    self.written.append(job)
                    self.log.write(event="image", index=job.prompt_index, image_index=job.image_index,
                                   file=job.file, seconds=round(time.perf_counter() - start, 3))
                bar.update(1)

    def finish(self) -> None:
        self.log.write(event="end")
        self.log.close()
        if self.lost:
            logger.error("rank %d lost %d image(s) of prompt(s) %s", self.group.rank, len(self.lost),
                         sorted({job.prompt_index for job, _ in self.lost}))
