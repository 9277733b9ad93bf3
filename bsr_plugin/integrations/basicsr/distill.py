"""Distillation from a frozen full-precision teacher, for :class:`BinarySRModel`.

Options (``train: distill:`` of a BasicSR YAML)::

    distill:
      network: {type: EDSR, num_feat: 64, num_block: 16, upscale: 4}   # the teacher: any registered arch
      pretrain: experiments/EDSR_x4/models/net_g_latest.pth            # its weights (required)
      param_key: params           # key in the checkpoint (default: params_ema if present, else params)
      output_weight: 1.0          # L1 between the student's and the teacher's outputs
      feature_weight: 0.0         # weight of the feature term
      features: ['re:body\\.\\d+']  # module names (glob, or re:<regex>) whose outputs are matched

The feature term is the mean, over the matched modules, of ``||n(f_s) - n(f_t)||^2`` per
sample, with ``n`` the L2 normalisation of each sample's features (so it lies in [0, 4] and
does not depend on the features' scale). The teacher never trains (no gradient, eval mode,
not in any optimizer), is not part of ``net_g`` (so it is never saved, validated or exported)
and runs once per training step on the same input batch.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import OptionsError

DISTILL_KEYS = ("network", "pretrain", "param_key", "strict_load", "output_weight", "feature_weight", "features")


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def check_distill_options(opt: Any) -> list[str]:
    """Problems with a ``train.distill`` mapping (types and keys; files are checked by the preflight)."""
    if not isinstance(opt, Mapping):
        return [f"train.distill must be a mapping, got {type(opt).__name__}"]
    problems = [f"train.distill: unknown key {k!r}; known: {', '.join(DISTILL_KEYS)}" for k in opt
                if k not in DISTILL_KEYS]
    if not isinstance(opt.get("network"), Mapping) or "type" not in opt["network"]:
        problems.append("train.distill.network: the teacher network ({type: <registered arch>, ...}) is missing")
    if not isinstance(opt.get("pretrain"), str):
        problems.append("train.distill.pretrain: the teacher's checkpoint path is missing (a teacher must be trained)")
    for key in ("output_weight", "feature_weight"):
        value = opt.get(key, 1.0 if key == "output_weight" else 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"train.distill.{key} must be a number >= 0, got {value!r}")
    features = opt.get("features", [])
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, str) for f in features):
        problems.append(f"train.distill.features must be a list of module-name patterns, got {features!r}")
    elif opt.get("feature_weight", 0.0) and not features:
        problems.append("train.distill.feature_weight is set but features names no module")
    return problems


def matched_features(student: nn.Module, teacher: nn.Module, patterns: list[str]) -> list[str]:
    """Module names matched by ``patterns`` in the student, each also present in the teacher."""
    names = [n for n, _ in student.named_modules() if n and any(_matches(p, n) for p in patterns)]
    if patterns and not names:
        raise OptionsError(f"train.distill.features {patterns} match no module of the student network")
    teacher_names = {n for n, _ in teacher.named_modules()}
    missing = [n for n in names if n not in teacher_names]
    if missing:
        raise OptionsError(f"train.distill.features: the teacher has no module {', '.join(missing[:4])} "
                           "(feature distillation pairs modules of the same name)")
    return names


class Distiller(nn.Module):
    """The frozen teacher and the distillation losses (see the module docstring).

    Args:
        teacher: the full-precision network, with its weights loaded.
        student: the network being trained (its modules named in ``features`` are hooked).
        output_weight: weight of the output L1 term.
        feature_weight: weight of the feature term.
        features: module-name patterns for the feature term.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, output_weight: float = 1.0,
                 feature_weight: float = 0.0, features: Optional[list[str]] = None) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.output_weight = float(output_weight)
        self.feature_weight = float(feature_weight)
        self.names = matched_features(student, teacher, list(features or [])) if self.feature_weight else []
        self._student: dict[str, Tensor] = {}
        self._teacher: dict[str, Tensor] = {}
        self._handles = [self._hook(student, n, self._student) for n in self.names]
        self._handles += [self._hook(self.teacher, n, self._teacher) for n in self.names]

    @staticmethod
    def _hook(net: nn.Module, name: str, store: dict[str, Tensor]) -> Any:
        def keep(mod: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, Tensor):
                store[name] = out
        return net.get_submodule(name).register_forward_hook(keep)

    def train(self, mode: bool = True) -> Distiller:
        """The teacher stays in eval mode whatever the model does."""
        super().train(mode)
        self.teacher.eval()
        return self

    def losses(self, lq: Tensor, output: Tensor) -> dict[str, Tensor]:
        """``{'l_distill_out': ..., 'l_distill_feat': ...}`` for the student's ``output`` on ``lq``
        (the student's forward pass must have just run, so its features are hooked)."""
        with torch.no_grad():
            target = self.teacher(lq)
        if target.shape != output.shape:
            raise OptionsError(f"train.distill: the teacher's output {tuple(target.shape)} differs from the "
                               f"student's {tuple(output.shape)}; the teacher must have the same scale and channels")
        out: dict[str, Tensor] = {}
        if self.output_weight:
            out["l_distill_out"] = self.output_weight * F.l1_loss(output, target)
        if self.feature_weight and self.names:
            terms = [_normalised_distance(self._student[n], self._teacher[n]) for n in self.names]
            out["l_distill_feat"] = self.feature_weight * torch.stack(terms).mean()
        self._student.clear()
        self._teacher.clear()
        return out

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _normalised_distance(fs: Tensor, ft: Tensor) -> Tensor:
    """Mean over samples of the squared distance of the L2-normalised features."""
    if fs.shape != ft.shape:
        raise OptionsError(f"train.distill.features: student features {tuple(fs.shape)} and teacher features "
                           f"{tuple(ft.shape)} differ in shape")
    ns = F.normalize(fs.flatten(1), dim=1)
    nt = F.normalize(ft.detach().flatten(1), dim=1)
    return (ns - nt).pow(2).sum(1).mean()
