"""pipe.interrupt() and progress handlers: a call stops within one denoise step, the next call is unaffected."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from fixtures_sd import build_sd15

from diffblocks import Interrupted, ModularPipeline, ProgressEvent
from diffblocks.presets.toy import ToyDiffusionBlocks

STEPS = 50


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_sd15(tmp_path_factory.mktemp("interrupt"))


def _load(folder) -> ModularPipeline:
    pipe = ModularPipeline.from_pretrained(str(folder))
    pipe.load_components()
    pipe.set_progress_bar_config(disable=True)
    return pipe


KW = {"prompt": "a red cat", "num_inference_steps": STEPS, "output_type": "pt", "output": "images", "height": 32,
      "width": 32}


def _seeded():
    return torch.Generator().manual_seed(0)


def test_interrupt_from_another_thread_after_step_2(folder):
    pipe = _load(folder)
    reached, done = threading.Event(), threading.Event()
    steps: list[int] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "step":
            steps.append(event.step)
            assert event.total == len(pipe.scheduler.timesteps)
            if event.step == 2:
                reached.set()
                assert done.wait(10)  # the other thread has called interrupt() by now

    pipe.add_progress_handler(on_progress)

    def stopper() -> None:
        assert reached.wait(60)
        pipe.interrupt()
        done.set()

    thread = threading.Thread(target=stopper)
    thread.start()
    with pytest.raises(Interrupted, match="at step 3/"):
        pipe(**KW, generator=_seeded())
    thread.join()
    assert steps == [1, 2]  # stopped before step 3 started: within one step of the interrupt

    # nothing half-written: the next call equals a fresh pipeline's result
    pipe.remove_progress_handler(on_progress)
    short = dict(KW, num_inference_steps=4)
    again = pipe(**short, generator=_seeded())
    fresh = _load(folder)(**short, generator=_seeded())
    assert torch.equal(again, fresh)


def test_interrupt_from_a_step_callback(folder):
    pipe = _load(folder)
    seen = []

    def callback(p, step_index, timestep, callback_kwargs):
        seen.append(step_index)
        if step_index == 4:
            p.interrupt()
        return callback_kwargs

    with pytest.raises(Interrupted):
        pipe(**dict(KW, num_inference_steps=8), generator=_seeded(), callback_on_step_end=callback)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_interrupt_from_a_signal_handler():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread only")
    pipe = ToyDiffusionBlocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    previous = signal.signal(signal.SIGUSR1, lambda *_: pipe.interrupt())
    steps = []

    def on_progress(event):
        if event.kind == "step":
            steps.append(event.step)
            if event.step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    pipe.add_progress_handler(on_progress)
    try:
        with pytest.raises(Interrupted):
            pipe(num_inference_steps=20)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert steps == [1, 2, 3]


def test_an_interrupt_between_calls_does_not_stop_the_next_call():
    pipe = ToyDiffusionBlocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(num_inference_steps=5, output="points")
    pipe.interrupt()
    assert torch.equal(pipe(num_inference_steps=5, output="points"), expected)


def test_shared_interrupt_event_stops_any_pipeline_using_it():
    shared = threading.Event()
    pipes = [ToyDiffusionBlocks().init_pipeline() for _ in range(2)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        pipe.interrupt_event = shared
        pipe.add_progress_handler(lambda e: shared.set() if e.kind == "step" and e.step == 2 else None)
        with pytest.raises(Interrupted):
            pipe(num_inference_steps=10)
    with pytest.raises(TypeError, match="threading.Event"):
        pipes[0].interrupt_event = True


def test_progress_events_name_blocks_and_steps():
    pipe = ToyDiffusionBlocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    events: list[ProgressEvent] = []
    pipe.add_progress_handler(events.append)
    pipe(num_inference_steps=4)
    starts = [e.path for e in events if e.kind == "block_start"]
    ends = [e.path for e in events if e.kind == "block_end"]
    assert starts[0] == "ToyDiffusionBlocks" and ends[-1] == "ToyDiffusionBlocks"
    assert sorted(starts) == sorted(ends)  # every started block finished
    assert starts == ["ToyDiffusionBlocks", "ToyDiffusionBlocks.prepare", "ToyDiffusionBlocks.prepare.from_noise",
                      "ToyDiffusionBlocks.denoise", "ToyDiffusionBlocks.summary"]
    steps = [(e.step, e.total) for e in events if e.kind == "step"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    loop_end = next(i for i, e in enumerate(events) if e.kind == "block_end" and e.path.endswith("denoise"))
    assert all(e.kind != "step" for e in events[loop_end:])  # steps reported inside their loop
    assert all(e.seconds is not None and e.seconds >= 0 for e in events if e.kind == "block_end")
    with pytest.raises(TypeError, match="callable"):
        pipe.add_progress_handler(3)
    with pytest.raises(ValueError, match="not a progress handler"):
        pipe.remove_progress_handler(print)


def test_block_run_on_a_pipeline_goes_through_its_executor(folder):
    """`block.run(pipe, ...)` is a call of the pipeline: progress handlers see it, the block cache serves a repeat,
    and pipe.interrupt() stops it."""
    pipe = _load(folder)
    encoder = pipe.blocks.sub_blocks["text_encoder"]
    events: list[ProgressEvent] = []
    handler = pipe.add_progress_handler(events.append)
    pipe.enable_block_cache("64MB")
    first = encoder.run(pipe, prompt="a red cat")
    again = encoder.run(pipe, prompt="a red cat")
    assert torch.equal(first["prompt_embeds"], again["prompt_embeds"])
    assert [e.kind for e in events if e.kind.startswith("block")][:2] == ["block_start", "block_end"]
    assert pipe.block_cache_info().hits >= 1
    pipe.remove_progress_handler(handler)


    toy = ToyDiffusionBlocks().init_pipeline()
    toy.set_progress_bar_config(disable=True)
    steps: list[int] = []

    def stop_after_two(event: ProgressEvent) -> None:
        if event.kind == "step":
            steps.append(event.step)
            if event.step == 2:
                toy.interrupt()

    toy.add_progress_handler(stop_after_two)
    with pytest.raises(Interrupted, match="at step 3/"):
        toy.blocks.run(toy, num_points=16, seed=0)
    assert steps == [1, 2]
