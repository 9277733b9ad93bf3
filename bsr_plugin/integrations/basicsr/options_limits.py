"""The numbers of an options file, checked by the preflight before anything is written: every
number is finite; every count, size, frequency and rate BasicSR uses lies in its range (a value
BasicSR would crash on after ``experiments/`` exists -- a zero frequency, a learning rate Adam
refuses, a seed numpy refuses -- or one that is absurd); and the optimizer, the scheduler and
the losses are constructed once, as BasicSR will (a loss is built under
:func:`bsr_plugin.safety.building_from_data`: a perceptual loss whose VGG weights would be
downloaded is refused). Each problem names the key and the accepted range."""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Optional

from ...errors import UnsafeInputError
from ...safety import building_from_data

MAX_ITER = 10**8
"""Iterations, frequencies and milestones: at most this many (the paper trains 300k)."""

Range = tuple[Optional[float], Optional[float], bool]
"""``(low, high, integral)``: inclusive bounds (None: unbounded) and whether a whole number is required."""

RANGES: dict[tuple[str, ...], Range] = {
    ("train", "warmup_iter"): (-1, MAX_ITER, True),
    ("train", "ema_decay"): (0, 0.999999, False),
    ("train", "optim_g", "lr"): (1e-12, 1.0, False),
    ("train", "optim_g", "weight_decay"): (0, 1.0, False),
    ("train", "optim_g", "eps"): (1e-30, 1.0, False),
    ("train", "scheduler", "gamma"): (1e-6, 1.0, False),
    ("train", "scheduler", "eta_min"): (0, 1.0, False),
    ("val", "val_freq"): (1, MAX_ITER, True),
    ("logger", "print_freq"): (1, MAX_ITER, True),
    ("logger", "save_checkpoint_freq"): (1, MAX_ITER, True),
}
"""Keys the rest of the preflight does not range-check (scale, seed, total_iter and the
dataset counts are checked with their types in :mod:`.options_check`)."""
LOSS_KEYS = ("pixel_opt", "perceptual_opt", "prior_opt")


def _numbers(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every number in ``node`` with its key path."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{where}[{i}]")
    elif isinstance(node, float):
        yield where, node


def _out_of_range(where: str, value: Any, bounds: Range) -> Optional[str]:
    low, high, integral = bounds
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (integral and not whole) or (low is not None and value < low) or (high is not None and value > high):
        kind = "a whole number" if integral else "a number"
        shown = repr(value[:80]) if isinstance(value, str) else repr(value)[:80]
        return f"{where}: {shown} must be {kind} in [{low:g}, {high:g}]"
    return None


def _get(opt: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = opt
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def range_problems(opt: Mapping[str, Any], is_train: bool) -> list[str]:
    """The keys of :data:`RANGES` (the training keys only for training)."""
    problems = []
    for keys, bounds in RANGES.items():
        present, value = _get(opt, keys)
        if present and value is not None and (is_train or keys[0] not in ("train", "logger", "val")):
            problem = _out_of_range(".".join(keys), value, bounds)
            if problem:
                problems.append(problem)
    return problems


def non_finite_problems(opt: Mapping[str, Any], found: list[str]) -> list[str]:
    """Every number that is not finite, unless a problem in ``found`` already names its key."""
    named = [p.split(":", 1)[0].split(" ", 1)[0] for p in found]
    return [f"{where}: {value} is not a finite number; give a finite value" for where, value in _numbers(opt, "")
            if not math.isfinite(value) and not any(where == n or where.startswith((n + ".", n + "[")) for n in named)]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def optimizer_problems(train: Mapping[str, Any], found: list[str]) -> list[str]:
    """``optim_g`` and ``scheduler`` constructed once on a dummy parameter, as BasicSR will
    (skipped where ``found`` already has a problem with them)."""
    import torch

    optim, sched = train.get("optim_g"), train.get("scheduler")
    if not isinstance(optim, Mapping) or optim.get("type") != "Adam" or \
            any(p.startswith(("train.optim_g", "train.scheduler")) for p in found):
        return []  # reported by the preflight
    try:
        optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)],
                                     **{k: v for k, v in optim.items() if k != "type"})
    except (TypeError, ValueError) as err:
        return [f"train.optim_g: Adam refuses these options ({_first_line(err)})"]
    if not isinstance(sched, Mapping) or not isinstance(sched.get("type"), str):
        return []
    from basicsr.models import lr_scheduler

    kind = "MultiStepRestartLR" if sched["type"] == "MultiStepLR" else sched["type"]
    make = getattr(lr_scheduler, kind, None)
    if make is None:
        return []  # reported by the preflight
    try:
        make(optimizer, **{k: v for k, v in sched.items() if k != "type"})
    except (TypeError, ValueError, AssertionError, KeyError, ZeroDivisionError) as err:
        return [f"train.scheduler: {sched['type']} refuses these options ({_first_line(err)})"]
    return []


def loss_problems(train: Mapping[str, Any], source: str) -> list[str]:
    """Each loss of ``train`` built once, under the options guard (no download, no FIFO)."""
    from basicsr.losses import build_loss
    from basicsr.utils.registry import LOSS_REGISTRY

    problems = []
    for key in LOSS_KEYS:
        spec = train.get(key)
        if not isinstance(spec, Mapping) or spec.get("type") not in LOSS_REGISTRY:
            continue  # an unknown type is reported by the preflight
        weight = spec.get("loss_weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1e6:
            problems.append(f"train.{key}.loss_weight: {repr(weight)[:80]} must be a number in [0, 1e+06]")
            continue
        try:
            with building_from_data(source, strict=False):
                build_loss(dict(spec))
        except UnsafeInputError as err:
            problems.append(f"train.{key}: {err}")
        except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, OSError) as err:
            problems.append(f"train.{key}: {spec.get('type')} cannot be built with these options ({_first_line(err)})")
    return problems
