"""The package layout rules of ARCHITECTURE.md: blocks/ never imports runtime/ (nor model code), and no file
in diffblocks/ grows past the size a reader can hold (~600 lines)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffblocks"
MAX_LINES = 600

# a child process where importing any of these raises ImportError (a meta-path finder placed first)
BLOCKER = """
import sys

BLOCKED = {blocked!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked by the test: {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
"""

TOY_BLOCK = """
from diffblocks.blocks import InputParam, ModularPipelineBlocks, OutputParam

class Double(ModularPipelineBlocks):
    inputs = [InputParam("x", int, required=True)]
    intermediate_outputs = [OutputParam("y")]

    def __call__(self, components, state):
        bs = self.get_block_state(state)
        bs.y = 2 * bs.x
        self.set_block_state(state, bs)
        return components, state
"""


def run_child(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_blocks_import_with_runtime_and_model_code_blocked():
    blocked = ["diffblocks.runtime", "diffblocks.components", "diffblocks.presets", "diffblocks.guiders", "torch"]
    code = BLOCKER.format(blocked=blocked) + TOY_BLOCK + """
import diffblocks.blocks
seq = diffblocks.blocks.SequentialPipelineBlocks.from_blocks_dict({"double": Double})
assert seq.input_names == ["x"], seq.input_names
print(sorted(m for m in sys.modules if m.startswith("diffblocks.")))
try:
    seq.init_pipeline()
except RuntimeError as exc:
    print("ERROR:", exc)
"""
    result = run_child(code)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.splitlines()[0]
    assert "diffblocks.blocks" in loaded and "diffblocks.runtime" not in loaded
    # the runtime is needed to build a pipeline, and the error says so
    assert "ERROR: ModularPipelineBlocks.init_pipeline needs the runtime (diffblocks.runtime)" in result.stdout


def test_blocks_reach_the_runtime_through_the_seam_on_first_use():
    code = TOY_BLOCK + """
import sys
assert "diffblocks.runtime" not in sys.modules
pipe = Double().init_pipeline()
print(type(pipe).__module__, type(pipe).__name__, pipe(x=21, output="y"))
"""
    result = run_child(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["diffblocks.runtime.pipeline", "ModularPipeline", "42"]


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_module_in_blocks_imports_runtime_or_model_code():
    forbidden = ("diffblocks.runtime", "diffblocks.components", "diffblocks.presets", "diffblocks.guiders",
                 "diffblocks.cli")
    offenders = []
    for path in sorted((PACKAGE / "blocks").rglob("*.py")):
        for name in _imported_modules(path, "diffblocks.blocks"):
            if name.startswith(forbidden):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "blocks/ must not depend on runtime/ or model code (ARCHITECTURE.md):\n" + "\n".join(
        offenders)


def test_no_file_in_the_package_is_over_the_size_limit():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, f"files over {MAX_LINES} lines (split them by concept):\n" + "\n".join(too_long)
