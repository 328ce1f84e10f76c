"""`diffblocks run workflow_api.json [--set 6.inputs.text="a cat"]`: run a ComfyUI API-format workflow without a
server, with the same engine as `diffblocks serve` (diffblocks/server/engine.py), and print the files it wrote."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["apply_set", "load_workflow", "register"]


class WorkflowFileError(ValueError):
    """The workflow file or a --set option is not usable; the message says why."""


def load_workflow(path: str | Path) -> dict[str, Any]:
    """The API-format prompt in `path` (also accepts a `POST /prompt` body `{"prompt": {...}}`)."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowFileError(f"workflow file {str(path)!r} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkflowFileError(f"{path} is not a JSON file: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise WorkflowFileError(f"{path} is a UI workflow (nodes/links), not the API format; in the ComfyUI frontend "
                                "export it with 'Export (API)' and run that file")
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) and "class_type" in v
                                                         for v in data.values()):
        raise WorkflowFileError(f"{path} is not an API-format workflow: expected a JSON object of node id -> "
                                '{"class_type": ..., "inputs": {...}}')
    return data


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a plain string: --set 6.inputs.text="a cat"


def apply_set(prompt: dict[str, Any], assignment: str, registry: Any = None) -> None:
    """Apply one `NODE.inputs.NAME=VALUE` (VALUE read as JSON when it parses, else as a string)."""
    if "=" not in assignment:
        raise WorkflowFileError(f"--set {assignment!r}: expected NODE.inputs.NAME=VALUE, e.g. 6.inputs.text=\"a cat\"")
    path, value = assignment.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 3 or parts[1] != "inputs" or not parts[0] or not parts[2]:
        raise WorkflowFileError(f"--set {assignment!r}: the path must be NODE.inputs.NAME (e.g. 3.inputs.seed), "
                                f"got {path!r}")
    node_id, _, name = parts
    if node_id not in prompt:
        raise WorkflowFileError(f"--set {assignment!r}: the workflow has no node {node_id!r}; nodes: "
                                + ", ".join(f"{k} ({v['class_type']})" for k, v in prompt.items()))
    node = prompt[node_id]
    inputs = node.setdefault("inputs", {})
    known = set(inputs)
    if registry is not None and node["class_type"] in registry:
        spec = registry.get(node["class_type"]).input_types(registry.paths)
        known |= set(spec.get("required", {})) | set(spec.get("optional", {}))
    if name not in known:
        raise WorkflowFileError(f"--set {assignment!r}: node {node_id} ({node['class_type']}) has no input "
                                f"{name!r}; its inputs: {sorted(known)}")
    inputs[name] = _parse_value(value)


def _describe(result: Any) -> str:
    lines = []
    if result.error:
        lines.append(f"{result.error['message']}" + (f": {result.error['details']}" if result.error["details"]
                                                     and not result.node_errors else ""))
    for node_id, record in result.node_errors.items():
        for error in record["errors"]:
            lines.append(f"  node {node_id} ({record['class_type']}): {error['type']}: {error['message']}"
                         + (f" ({error['details']})" if error["details"] else ""))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..runtime.execution import Interrupted
    from ..server import ExecutionHooks, PromptEngine

    prompt = load_workflow(args.workflow)
    engine = PromptEngine(models_dir=args.models, input_dir=args.input, output_dir=args.output,
                          temp_dir=args.temp, cache_memory=args.cache_memory)
    for assignment in args.set or []:
        apply_set(prompt, assignment, engine.registry)
    result = engine.validate(prompt)
    if not result.ok:
        raise WorkflowFileError(f"the workflow is not valid:\n{_describe(result)}")
    if result.node_errors:
        print(f"some outputs are skipped:\n{_describe(result)}", file=sys.stderr)
    bars: dict[str, Any] = {}

    def on_progress(node: str, value: int, total: int) -> None:
        bar = bars.get(node)
        if bar is None or bar.total != total:
            bar = bars[node] = tqdm(total=total, desc=f"node {node} ({prompt[node]['class_type']})", leave=False)
        bar.n = value
        bar.refresh()

    previous = signal.signal(signal.SIGINT, lambda *_: engine.interrupt())  # Ctrl-C stops at the next step
    try:
        outputs = engine.execute("cli", prompt, result.outputs, ExecutionHooks(on_progress=on_progress))
    except Interrupted:
        print("diffblocks run: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        for bar in bars.values():
            bar.close()
    folders = {"output": engine.paths.output_dir, "temp": engine.paths.temp_dir, "input": engine.paths.input_dir}
    for ui in outputs.values():
        for entry in ui.get("images", []):
            print(folders[entry["type"]] / entry["subfolder"] / entry["filename"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run a ComfyUI API-format workflow (workflow_api.json) with the node engine "
                                        "of `diffblocks serve` and print the files it wrote")
    parser.add_argument("workflow", help="the workflow in ComfyUI's API format (Export (API) in the frontend)")
    parser.add_argument("--models", default="models", help="checkpoints folder: diffusers folders and .safetensors "
                        "at its top and under checkpoints/, LoRAs under loras/ (default: %(default)s)")
    parser.add_argument("--input", default="input", help="folder LoadImage reads (default: %(default)s)")
    parser.add_argument("--output", default="output", help="folder SaveImage writes (default: %(default)s)")
    parser.add_argument("--temp", default=None, help="folder PreviewImage writes (default: temp/ beside --output)")
    parser.add_argument("--cache-memory", dest="cache_memory", default="4GB",
                        help="bytes of node outputs kept between prompts (default: %(default)s)")
    parser.add_argument("--set", action="append", metavar="NODE.inputs.NAME=VALUE",
                        help="change an input before running, e.g. --set 6.inputs.text=\"a cat\" --set "
                             "3.inputs.seed=5 (VALUE is read as JSON when it parses, else as text; repeatable)")
    parser.set_defaults(func=_run)
