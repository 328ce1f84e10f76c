"""Checking an API-format prompt before it runs, with ComfyUI's error format.

A prompt is `{node_id: {"class_type": str, "inputs": {name: constant | [source_node_id, output_index]}}}`. The
result mirrors ComfyUI's `validate_prompt`: a prompt-level `error` (`invalid_prompt`, `prompt_no_outputs`,
`prompt_outputs_failed_validation`) and per-node `node_errors` with ComfyUI's error types
(`required_input_missing`, `bad_linked_input`, `return_type_mismatch`, `invalid_input_type`,
`value_smaller_than_min`, `value_bigger_than_max`, `value_not_in_list`, `custom_validation_failed`,
`dependency_cycle`, `exception_during_validation`). Output nodes whose upstream graph is valid are kept
(`outputs`); the prompt is runnable when at least one is.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any

from .nodes.base import Node, ServerPaths
from .nodes.registry import NodeRegistry

logger = logging.getLogger(__name__)

__all__ = ["ValidationResult", "is_link", "validate_prompt"]


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def _error(type_: str, message: str, details: str = "", **extra_info: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def is_link(value: Any) -> bool:
    """A linked input: `[node_id, output_index]` (ComfyUI also accepts other 2-lists; widget values are never
    lists except COMBO-less list constants, which no core node takes)."""
    return isinstance(value, list)


def _types_match(received: str, expected: str) -> bool:
    if received == "*" or expected == "*":
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _full_type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class _Validator:
    def __init__(self, prompt: dict[str, Any], registry: NodeRegistry, paths: ServerPaths | None) -> None:
        self.prompt, self.registry, self.paths = prompt, registry, paths
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self.visiting: set[str] = set()

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        if node_id in self.visiting:
            return False, [_error("dependency_cycle", "Dependency cycle detected", f"node {node_id} depends on "
                                  f"itself through its inputs", node_id=node_id)]
        self.visiting.add(node_id)
        try:
            result = self._check(node_id)
        except Exception as exc:  # a bug in a node's check(): reported on the node, never raised
            result = (False, [_error("exception_during_validation", "Exception when validating node", str(exc),
                                     exception_type=_full_type_name(type(exc)),
                                     traceback=traceback.format_tb(exc.__traceback__))])
        finally:
            self.visiting.discard(node_id)
        self.validated[node_id] = result
        return result

    def _check(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        entry = self.prompt[node_id]
        node_cls: type[Node] = self.registry.get(entry["class_type"])
        inputs = entry.get("inputs") or {}
        if not isinstance(inputs, dict):
            return False, [_error("invalid_input_type", "Node inputs must be a JSON object", f"{type(inputs).__name__}")]
        spec = node_cls.input_types(self.paths)
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        errors: list[dict[str, Any]] = []
        valid = True
        constants: dict[str, Any] = {}
        for name in spec.get("required", {}):
            if name not in inputs:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
        for name, value in inputs.items():
            info = declared.get(name)
            if info is None:
                continue  # ComfyUI ignores inputs a node does not declare (e.g. widgets of a newer version)
            if is_link(value):
                problem = self._check_link(name, value, info)
                if problem is not None:
                    errors.append(problem)
                    continue
                upstream_ok, _ = self.node(str(value[0]))
                if not upstream_ok:
                    valid = False
                continue
            checked = self._check_constant(name, value, info)
            if isinstance(checked, dict):
                errors.append(checked)
            else:
                constants[name] = checked[0]
        if not errors:
            for name, message in node_cls.check(constants, self.paths):
                errors.append(_error("custom_validation_failed", "Custom validation failed for node",
                                     f"{name} - {message}", input_name=name, input_config=declared.get(name),
                                     received_value=constants.get(name)))
        return (not errors and valid), errors

    def _check_link(self, name: str, value: list, info: list) -> dict[str, Any] | None:
        if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
            return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                          name, input_name=name, input_config=info, received_value=value)
        source = str(value[0])
        if source not in self.prompt:
            return _error("bad_linked_input", f"Linked node {source} does not exist in the prompt", name,
                          input_name=name, input_config=info, received_value=value)
        source_cls = self.registry.get(self.prompt[source]["class_type"])
        returns = source_cls.RETURN_TYPES
        if not 0 <= value[1] < len(returns):
            return _error("bad_linked_input", f"Node {source} ({source_cls.class_type()}) has {len(returns)} "
                          f"output(s); slot {value[1]} does not exist", name, input_name=name, input_config=info,
                          received_value=value)
        expected = info[0]
        received = returns[value[1]]
        if isinstance(expected, list):  # a COMBO fed by a link: ComfyUI matches it against the source's type
            expected = "COMBO"
        if not _types_match(received, expected):
            return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                          f"{name}, {received} != {expected}", input_name=name, input_config=info,
                          received_type=received, linked_node=value)
        return None

    def _check_constant(self, name: str, value: Any, info: list) -> tuple[Any] | dict[str, Any]:
        type_input = info[0]
        options = info[1] if len(info) > 1 and isinstance(info[1], dict) else {}
        try:
            if type_input == "INT":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{value} is not a whole number")
                value = int(value)
            elif type_input == "FLOAT":
                value = float(value)
            elif type_input == "STRING":
                value = str(value)
            elif type_input == "BOOLEAN":
                if not isinstance(value, bool):
                    raise ValueError(f"{value!r} is not true or false")
            elif not isinstance(type_input, list):
                return _error("bad_linked_input", f"Input {name} of type {type_input} must be linked to a node's "
                              f"output ([node_id, slot_index])", name, input_name=name, input_config=info,
                              received_value=value)
        except (TypeError, ValueError) as exc:
            return _error("invalid_input_type", f"Failed to convert an input value to a {type_input} value",
                          f"{name}, {value}, {exc}", input_name=name, input_config=info, received_value=value,
                          exception_message=str(exc))
        if type_input in ("INT", "FLOAT"):
            if "min" in options and value < options["min"]:
                return _error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", name,
                              input_name=name, input_config=info, received_value=value)
            if "max" in options and value > options["max"]:
                return _error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", name,
                              input_name=name, input_config=info, received_value=value)
        if isinstance(type_input, list) and value not in type_input:
            listed = f"(list of length {len(type_input)})" if len(type_input) > 20 else str(type_input)
            return _error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                          input_name=name, input_config=info if len(type_input) <= 20 else None,
                          received_value=value)
        return (value,)


def validate_prompt(prompt: Any, registry: NodeRegistry, paths: ServerPaths | None = None) -> ValidationResult:
    if not isinstance(prompt, dict):
        return ValidationResult(False, _error("invalid_prompt", "The prompt must be a JSON object of node id -> "
                                              "{class_type, inputs}", type(prompt).__name__))
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or "class_type" not in entry:
            return ValidationResult(False, _error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'"))
        if entry["class_type"] not in registry:
            return ValidationResult(False, _error(
                "invalid_prompt", f"Cannot execute because node {entry['class_type']} does not exist.",
                f"Node ID '#{node_id}'"))
    outputs = [node_id for node_id, entry in prompt.items() if registry.get(entry["class_type"]).OUTPUT_NODE]
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"))
    validator = _Validator({str(k): v for k, v in prompt.items()}, registry, paths)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, dict[str, Any]] = {}
    for output in outputs:
        ok, reasons = validator.node(str(output))
        if ok:
            good.append(str(output))
            continue
        failed.append((str(output), reasons))
        for node_id, (node_ok, node_reasons) in validator.validated.items():
            if node_ok or not node_reasons:
                continue  # downstream of an invalid node: reported on the node that has the errors
            record = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                      "class_type": prompt[node_id]["class_type"]})
            if str(output) not in record["dependent_outputs"]:
                record["dependent_outputs"].append(str(output))
    for node_id, record in node_errors.items():
        for reason in record["errors"]:
            logger.warning("prompt validation: %s %s: %s: %s", record["class_type"], node_id, reason["message"],
                           reason["details"])
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        return ValidationResult(False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                              details), node_errors, [])
    return ValidationResult(True, None, node_errors, good)
