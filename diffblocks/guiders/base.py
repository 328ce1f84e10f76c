"""Guider base: a configurable component that plans the model passes of a denoising step and combines them.

How a denoise loop uses a guider
--------------------------------
Fast path (batches cond + uncond into one model call; perturbed passes run on their own)::

    guider = guider.with_overrides(guidance_scale=5.0)      # per-call knobs; the component is untouched
    for i, t in enumerate(timesteps):
        guider.set_state(step=i, num_inference_steps=len(timesteps), timestep=t)
        preds = {}
        for group in guider.prepare_passes({"latents": latents,                    # shared tensor: repeated
                                            "prompt_embeds": (embeds, neg_embeds)}, # (cond, uncond)
                                           batched=True):
            with guider.perturbation(unet, group):          # hooks only for perturbed groups
                out = unet(group.latents, t, encoder_hidden_states=group.prompt_embeds).sample
            preds.update(group.split(out))                  # {"pred_uncond": ..., "pred_cond": ...}
        noise_pred = guider.combine(preds).pred

A group concatenates its passes along dim 0 in the order of the standard pipelines
(``torch.cat([uncond, cond])``); ``group.identifiers`` lists them, ``group.split`` undoes it. With
``batched=False`` every pass is its own group. Values in the fields dict: a tensor is shared by every
pass (repeated within a group), a tuple ``(cond, uncond)`` is indexed per pass, a dict is handled per
key, ``None`` stays ``None``, other values are passed through unchanged.

Reference-compatible path (ports Modular Diffusers code unchanged)::

    guider.set_state(step=i, num_inference_steps=n, timestep=t)
    batches = guider.prepare_inputs({"prompt_embeds": (pe, npe)})   # objects with attribute access
    for batch in batches:
        guider.prepare_models(unet)
        batch.noise_pred = unet(latents, t, encoder_hidden_states=batch.prompt_embeds).sample
        guider.cleanup_models(unet)
    noise_pred = guider(batches)[0]

`num_conditions` is the number of passes this step (1 when guidance is off); `requires_unconditional`
says whether the text encoder must produce negative embeddings at all. Guidance with
``guidance_scale <= 1`` (``<= 0`` with ``use_original_formulation``) is off: one pass per step.
Guiders that perturb the model pick default layers from the model the first time they see it
(see `hooks.default_layer_stack`) and log them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
import operator
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..components.config import ConfigMixin
from .hooks import PerturbationHandle

logger = logging.getLogger(__name__)

__all__ = ["BaseGuidance", "GuidanceBatch", "GuiderOutput", "PassGroup", "rescale_noise_cfg"]

IDENTIFIER_KEY = "__guidance_identifier__"


@dataclass
class GuiderOutput:
    """The guided prediction plus the conditional / unconditional ones; ``out[0]`` is ``pred``."""

    pred: torch.Tensor
    pred_cond: torch.Tensor | None = None
    pred_uncond: torch.Tensor | None = None

    def __getitem__(self, key: int | str) -> torch.Tensor | None:
        if isinstance(key, str):
            return getattr(self, key)
        return (self.pred, self.pred_cond, self.pred_uncond)[key]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter((self.pred, self.pred_cond, self.pred_uncond))


class GuidanceBatch:
    """The inputs of one model pass, with attribute access (``batch.prompt_embeds``)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != IDENTIFIER_KEY}

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __repr__(self) -> str:
        def show(v: Any) -> str:
            return f"Tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)

        body = ", ".join(f"{k}={show(v)}" for k, v in self.__dict__.items())
        return f"GuidanceBatch({body})"


@dataclass(frozen=True)
class _Pass:
    identifier: str
    tuple_index: int
    perturbed: bool = False


class PassGroup(GuidanceBatch):
    """One model call: one or more passes concatenated along dim 0.

    ``identifiers`` (in concatenation order), ``perturbed`` (run under `guider.perturbation`),
    ``sizes`` (batch size of each pass), and the fields as attributes.
    """

    def __init__(self, identifiers: list[str], perturbed: bool, sizes: list[int], **values: Any) -> None:
        fields = self.__dict__
        fields.update(values)
        fields["identifiers"] = identifiers
        fields["perturbed"] = perturbed
        fields["sizes"] = sizes

    def as_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        del values["identifiers"], values["perturbed"], values["sizes"]
        return values

    def split(self, pred: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model output of this group -> ``{identifier: prediction}`` (views along dim 0, no copies)."""
        identifiers = self.identifiers
        if len(identifiers) == 1:
            return {identifiers[0]: pred}
        sizes = self.sizes
        if pred.shape[0] != sum(sizes):
            raise ValueError(f"group {identifiers} expects a prediction with batch {sum(sizes)} "
                             f"(sizes {sizes}), got shape {tuple(pred.shape)}.")
        # one op for all the views (chunk when the passes have one size, as the standard pipelines' chunk(2))
        parts = pred.chunk(len(sizes)) if sizes.count(sizes[0]) == len(sizes) else pred.split(sizes)
        return dict(zip(identifiers, parts))


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
                      ) -> torch.Tensor:
    """Rescale the guided prediction's std to the conditional one's (arXiv 2305.08891, sec. 3.4)."""
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def _select(value: Any, index: int) -> Any:
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if isinstance(value, tuple):
        if index >= len(value):
            raise ValueError(f"guider needs input {index} of a (cond, uncond, ...) tuple of length {len(value)}.")
        return value[index]
    if isinstance(value, Mapping):
        return {k: _select(v, index) for k, v in value.items()}
    return value


_VERSION = operator.attrgetter("_version")


def _concat(values: list[Any], cache: dict | None = None, key: Any = None) -> Any:
    """The per-pass values of one field along dim 0. With a `cache`, a concatenation of the very same tensors
    (same objects, unmodified: same version counters) as last time is reused, so inputs that do not change
    across steps (prompt embeddings, added conditioning, masks) are concatenated once per loop, not per step."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        if len(values) == 1:
            return first
        if cache is None:
            return torch.cat(values, dim=0)
        try:
            stamp = (*map(id, values), *map(_VERSION, values))
        except RuntimeError:  # inference-mode tensors keep no version counter: no way to see edits, no reuse
            return torch.cat(values, dim=0)
        entry = cache.get(key)
        if entry is not None and entry[0] == stamp:
            return entry[2]
        result = torch.cat(values, dim=0)
        cache[key] = (stamp, values, result)  # holding the sources keeps their ids from being reused
        return result
    if isinstance(first, Mapping):
        return {k: _concat([v[k] for v in values], cache, (key, k)) for k in first}
    return first


def _batch_size(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.ndim else None
    if isinstance(value, Mapping):
        for v in value.values():
            size = _batch_size(v)
            if size is not None:
                return size
    return None


class BaseGuidance(ConfigMixin):
    """Shared state, windows, input preparation and hook handling; subclasses define the plan and math."""

    config_name = "guider_config.json"
    _input_predictions: list[str] = []
    _identifier_key = IDENTIFIER_KEY
    _overrides_on_prepare = False  # set per subclass (see __init_subclass__)

    def __init__(self, start: float = 0.0, stop: float = 1.0, enabled: bool = True) -> None:
        if not (0.0 <= start < 1.0):
            raise ValueError(f"{type(self).__name__}: start must be in [0, 1), got {start}.")
        if not (start <= stop <= 1.0):
            raise ValueError(f"{type(self).__name__}: stop must be in [start={start}, 1], got {stop}.")
        self._start = start
        self._stop = stop
        self._enabled = enabled
        self._step: int | None = None
        self._num_inference_steps: int | None = None
        self._timestep: Any = None
        self._count_prepared = 0
        self._plan_cache: list[_Pass] | None = None
        # prepare_passes: grouping per distinct plan, and concatenations of unchanged inputs (see `_concat`)
        self._group_cache: dict[tuple, list[list[_Pass]]] = {}
        self._last_groups: tuple | None = None
        self._concat_cache: dict[Any, Any] = {}
        self._installed: PerturbationHandle | None = None
        # model -> resolved perturbation configs (default layers picked once per model)
        self._resolved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- copies and overrides -------------------------------------------------------------------
    def new(self, **changes: Any) -> BaseGuidance:
        """A fresh guider with the same config, plus `changes`."""
        return type(self).from_config(self.config, **changes)

    def with_overrides(self, **changes: Any) -> BaseGuidance:
        """A copy with scalar knobs changed (``guidance_scale=5.0``) for one pipeline call.

        The component itself is not modified; default layers already picked are shared.
        """
        if not changes:
            return self
        accepted = set(self.init_parameter_names())
        for key, value in changes.items():
            if key not in accepted:
                raise ValueError(f"{type(self).__name__} has no option {key!r}; options: {sorted(accepted)}.")
            if value is not None and not isinstance(value, (numbers.Number, bool, str)):
                raise TypeError(f"{type(self).__name__}.with_overrides: {key} must be a scalar, got "
                                f"{type(value).__name__}; build a new guider with new(...) for structured options.")
        if all(self.config.get(k) == v for k, v in changes.items()):
            return self
        other = self.new(**changes)
        other._enabled = self._enabled
        other._resolved = self._resolved
        return other

    def enable(self) -> None:
        self._enabled = True
        self._plan_cache = None

    def disable(self) -> None:
        self._enabled = False
        self._plan_cache = None

    # -- state ----------------------------------------------------------------------------------
    def set_state(self, step: int, num_inference_steps: int, timestep: Any) -> None:
        self._step = step
        self._num_inference_steps = num_inference_steps
        self._timestep = timestep
        self._count_prepared = 0
        self._plan_cache = None

    def get_state(self) -> dict[str, Any]:
        return {
            "step": self._step,
            "num_inference_steps": self._num_inference_steps,
            "timestep": self._timestep,
            "count_prepared": self._count_prepared,
            "enabled": self._enabled,
            "num_conditions": self.num_conditions,
        }

    def __repr__(self) -> str:
        state = "\n".join(f"  {k}: {v}" for k, v in self.get_state().items())
        return f"{self.config_repr()}\nState:\n{state}"

    def _in_window(self, start: float, stop: float, strict: bool = False) -> bool:
        if self._num_inference_steps is None:
            return True
        lo, hi = int(start * self._num_inference_steps), int(stop * self._num_inference_steps)
        return lo < self._step < hi if strict else lo <= self._step < hi

    def _scale_active(self, scale: float, use_original_formulation: bool) -> bool:
        """Guidance with this scale changes the prediction (standard pipelines: scale > 1)."""
        neutral = 0.0 if use_original_formulation else 1.0
        return scale > neutral and not math.isclose(scale, neutral)

    # -- the plan -------------------------------------------------------------------------------
    def _plan(self) -> list[_Pass]:
        """The passes of the current step, in `prepare_inputs` order. Subclasses override."""
        raise NotImplementedError

    def _passes(self) -> list[_Pass]:
        if self._plan_cache is None:
            self._plan_cache = self._plan()
        return self._plan_cache

    @property
    def num_conditions(self) -> int:
        return len(self._passes())

    @property
    def requires_unconditional(self) -> bool:
        """Whether any step may need the unconditional (negative) inputs."""
        return True

    @property
    def is_conditional(self) -> bool:
        """Whether the pass being prepared (by `prepare_models`) uses the conditional inputs."""
        passes = self._passes()
        index = max(self._count_prepared - 1, 0)
        return index < len(passes) and passes[index].tuple_index == 0

    @property
    def is_unconditional(self) -> bool:
        return not self.is_conditional

    def _on_prepare(self) -> None:
        """Per-step work before the passes are built (e.g. resetting momentum at step 0)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # prepare_passes (every denoise step) skips the call of the empty default hook
        cls._overrides_on_prepare = cls._on_prepare is not BaseGuidance._on_prepare

    # -- inputs ---------------------------------------------------------------------------------
    def prepare_inputs(self, data: Mapping[str, Any]) -> list[GuidanceBatch]:
        """One `GuidanceBatch` per pass: tuple fields indexed per pass, other values shared."""
        self._on_prepare()
        batches = []
        for p in self._passes():
            values = {}
            for key, value in data.items():
                if isinstance(value, (torch.Tensor, tuple)):
                    values[key] = _select(value, p.tuple_index)
                else:
                    logger.debug("guider input %r of type %s is not a tensor or tuple; skipped", key,
                                 type(value).__name__)
            values[IDENTIFIER_KEY] = p.identifier
            batches.append(GuidanceBatch(**values))
        return batches

    def prepare_inputs_from_block_state(self, data: Any, input_fields: Mapping[str, str | tuple[str, ...]]
                                        ) -> list[GuidanceBatch]:
        """Like `prepare_inputs`, reading ``input_fields = {name: attr | (cond_attr, uncond_attr)}`` from `data`."""
        self._on_prepare()
        batches = []
        for p in self._passes():
            values = {}
            for key, source in input_fields.items():
                attr = source if isinstance(source, str) else source[p.tuple_index]
                if hasattr(data, attr):
                    values[key] = getattr(data, attr)
            values[IDENTIFIER_KEY] = p.identifier
            batches.append(GuidanceBatch(**values))
        return batches

    def _groups(self, passes: list[_Pass], batched: bool) -> list[tuple[tuple[int, ...], tuple[str, ...], bool]]:
        """How the passes of a plan are grouped into model calls: built once per distinct plan, then reused."""
        last = self._last_groups
        if last is not None and last[0] is passes and last[1] is batched:
            return last[2]
        key = (tuple(passes), batched)
        groups = self._group_cache.get(key)
        if groups is None:
            plain = [p for p in passes if not p.perturbed]
            # standard pipelines batch torch.cat([uncond, cond])
            plain.sort(key=lambda p: -p.tuple_index)
            grouped = [plain] if (batched and plain) else [[p] for p in plain]
            grouped += [[p] for p in passes if p.perturbed]
            groups = [(tuple(p.tuple_index for p in g), tuple(p.identifier for p in g), g[0].perturbed)
                      for g in grouped]
            self._group_cache[key] = groups
        self._last_groups = (passes, batched, groups)  # plans are reused objects (see `_passes`)
        return groups

    def prepare_passes(self, fields: Mapping[str, Any], batched: bool = True) -> list[PassGroup]:
        """The passes of this step grouped into model calls (see the module docstring).

        The grouping is built once per distinct plan; concatenations of inputs that did not change since the
        previous step (the same tensors, unmodified) are reused, so only the changing ones (latents) are
        concatenated per step.
        """
        if self._overrides_on_prepare:
            self._on_prepare()
        cache = self._concat_cache
        passes = self._plan_cache
        if passes is None:  # `_passes()` inlined: this runs every step
            passes = self._plan_cache = self._plan()
        last = self._last_groups
        groups = last[2] if last is not None and last[0] is passes and last[1] is batched \
            else self._groups(passes, batched)
        out = []
        for indices, ids, perturbed in groups:
            values: dict[str, Any] = {}
            sizes: list[int] = []
            if len(indices) == 1:  # one pass: pick the values, nothing to concatenate
                index = indices[0]
                for key, value in fields.items():
                    if type(value) is tuple and index < len(value):
                        value = values[key] = value[index]
                    elif isinstance(value, torch.Tensor) or value is None:
                        values[key] = value
                    else:
                        value = values[key] = _select(value, index)
                    if not sizes:
                        size = _batch_size(value)
                        if size is not None:
                            sizes = [size]
            else:
                shared: list[Any] = []  # tensors shared by every pass: their sizes are the fallback
                for key, value in fields.items():
                    if type(value) is tuple:
                        # the same (cond, uncond) tuple as last step with unmodified tensors: reuse, no work
                        entry = cache.get((ids, key, "tuple"))
                        if entry is not None and entry[0] is value:
                            try:
                                if tuple(map(_VERSION, value)) == entry[1]:
                                    values[key] = entry[2]
                                    if not sizes:
                                        sizes = entry[4]
                                    continue
                            except (RuntimeError, AttributeError):  # inference tensors, non-tensor members
                                pass
                        per_pass = [_select(value, index) for index in indices]
                        values[key] = _concat(per_pass, cache, (ids, key))
                        if all(isinstance(v, torch.Tensor) for v in value):
                            try:
                                found = [_batch_size(v) for v in per_pass]
                                cache[(ids, key, "tuple")] = (value, tuple(map(_VERSION, value)), values[key],
                                                              per_pass, found if None not in found else [])
                            except RuntimeError:  # inference tensors: no version counter
                                pass
                    elif isinstance(value, torch.Tensor):
                        per_pass = [value] * len(indices)
                        values[key] = _concat(per_pass, cache, (ids, key))
                        if not sizes:
                            shared.append(per_pass)
                        continue
                    else:
                        per_pass = [_select(value, index) for index in indices]
                        values[key] = _concat(per_pass, cache, (ids, key))
                    if not sizes:
                        found = [_batch_size(v) for v in per_pass]
                        if None not in found:
                            sizes = found
                for per_pass in shared if not sizes else ():
                    found = [_batch_size(v) for v in per_pass]
                    if None not in found:
                        sizes = found
                        break
                if not sizes:
                    raise ValueError("prepare_passes(batched=True) needs at least one tensor field to know the batch "
                                     "size.")
            out.append(PassGroup(list(ids), perturbed, sizes or [0], **values))
        return out

    # -- models ---------------------------------------------------------------------------------
    def _perturbation_configs(self, model: torch.nn.Module) -> list[Any]:
        """Perturbation configs for `model`, defaults resolved (subclasses that perturb override)."""
        return []

    def _install(self, model: torch.nn.Module) -> PerturbationHandle:
        raise NotImplementedError(f"{type(self).__name__} does not perturb the model.")

    @contextlib.contextmanager
    def perturbation(self, model: torch.nn.Module, group: PassGroup | GuidanceBatch | None = None
                     ) -> Iterator[None]:
        """Install this guider's hooks on `model` for a perturbed group; always removed on exit."""
        perturbed = group is None or getattr(group, "perturbed", None)
        if perturbed is None:  # a GuidanceBatch from prepare_inputs
            ident = getattr(group, IDENTIFIER_KEY, None)
            perturbed = any(p.perturbed and p.identifier == ident for p in self._passes())
        if not perturbed:
            yield
            return
        handle = self._install(model)
        try:
            yield
        finally:
            handle.remove()

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Reference-style: called before each pass in `prepare_inputs` order; hooks the perturbed ones."""
        self._count_prepared += 1
        passes = self._passes()
        index = self._count_prepared - 1
        if index < len(passes) and passes[index].perturbed:
            self.cleanup_models(denoiser)
            self._installed = self._install(denoiser)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._installed is not None:
            self._installed.remove()
            self._installed = None

    # -- combining ------------------------------------------------------------------------------
    def __call__(self, data: list[Any]) -> GuiderOutput:
        if not all(hasattr(d, "noise_pred") for d in data):
            raise ValueError(f"{type(self).__name__}: every batch needs a `noise_pred` attribute set from the model output.")
        if len(data) != self.num_conditions:
            raise ValueError(f"{type(self).__name__}: expected {self.num_conditions} batches this step, got {len(data)}.")
        return self.forward(**{getattr(d, IDENTIFIER_KEY): d.noise_pred for d in data})

    def combine(self, preds: Mapping[str, torch.Tensor]) -> GuiderOutput:
        """``{identifier: prediction}`` (e.g. merged `PassGroup.split` results) -> `GuiderOutput`."""
        passes = self._plan_cache if self._plan_cache is not None else self._passes()
        complete = len(preds) == len(passes)
        for p in passes:
            complete = complete and p.identifier in preds
        if not complete:
            expected = {p.identifier for p in passes}
            raise ValueError(f"{type(self).__name__}: expected predictions {sorted(expected)} this step, "
                             f"got {sorted(preds)}.")
        return self.forward(**preds)

    def forward(self, **preds: torch.Tensor) -> GuiderOutput:
        raise NotImplementedError

    def _finish(self, pred: torch.Tensor, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None,
                guidance_rescale: float) -> GuiderOutput:
        if guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    def copy_for_call(self) -> BaseGuidance:
        """A copy holding one pipeline call's state (current step, pass plan); config and layer picks shared."""
        return copy.copy(self)

    def __copy__(self) -> BaseGuidance:
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._installed = None
        other._concat_cache = {}  # tensors of another call stay with it
        return other

    def __deepcopy__(self, memo: dict) -> BaseGuidance:
        other = self.__copy__()
        other._resolved = weakref.WeakKeyDictionary()
        for k, v in self.__dict__.items():
            if k not in ("_resolved", "_installed", "_concat_cache"):
                other.__dict__[k] = copy.deepcopy(v, memo)
        return other
