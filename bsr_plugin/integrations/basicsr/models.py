"""``BinarySRModel``: BasicSR's ``SRModel`` plus what binarized training needs.

Options under ``train:`` besides SRModel's:

* ``prior_opt``: a loss on the latent weights (type ``UniformPriorLoss``), optional.
* ``project_prior`` (default true): clamp every prior-constrained weight into ``[-a, a]``
  after each optimizer step (maximum a posteriori under the uniform prior).
* ``binarize_schedule: {act_from_iter: 0, weight_from_iter: 0}``: staged binarization,
  activations binary from iteration ``act_from_iter`` on, weights from ``weight_from_iter``.
* ``calibrate_scales`` (default true): before the first step, fold each binarized layer's
  input magnitude on the first batch into its learned scale (:func:`bsr_plugin.calibrate_scales_`;
  skipped for layers already calibrated, e.g. when resuming or fine-tuning a binary checkpoint).
* ``prior_anneal: {start: 0.667, factor: 10}``: from progress ``start`` (iteration /
  total_iter) on, every layer's prior half-width ``a`` widens geometrically to ``factor`` times
  its value at the end (fewer sign flips late in training; absent: ``a`` stays fixed).
* ``latent_lr: {start: 0.5}``: the binarized layers' latent weights get their own optimizer
  group whose learning rate follows the others' until progress ``start``, then decays to 0 on a
  half cosine at the end of training (their signs settle; absent: one schedule for all).
* ``pixel_opt`` of type ``CurriculumL1Loss`` gets its progress (iteration / total_iter).
* ``distill``: distillation from a frozen full-precision teacher (see
  :mod:`bsr_plugin.integrations.basicsr.distill`): ``l_distill_out`` (output L1) and ``l_distill_feat``
  (normalised features of modules of the same name) join the loss. The teacher is not part of
  ``net_g``: it is never trained, saved, validated or exported.

Every ``logger.print_freq`` iterations it logs the mean flip ratio of the weight signs since the
last reading (``flip_ratio``), the fraction of latent weights at the prior's box edge
(``prior_edge``), the curriculum's quantile (``curriculum_q``), the mean branch/stream ratio of
the layers with a real shortcut (``branch_ratio``) and, one line each, the flip ratio of every
layer and the branch/stream ratio and stream magnitude of every layer with a shortcut.
Learned weight scales get no weight decay.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ...core import (
    binary_layers,
    branch_ratios,
    calibrate_scales_,
    flip_ratios,
    project_to_prior_,
    scale_parameters,
    set_binarization,
)
from ...core.prior import edge_fraction
from ...errors import OptionsError
from .distill import Distiller, check_distill_options
from .safe_models import SafeModelMixin
from .shims import import_basicsr

import_basicsr()
from basicsr.archs import build_network  # noqa: E402
from basicsr.losses import build_loss  # noqa: E402
from basicsr.models.sr_model import SRModel  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402

SCHEDULE_KEYS = ("act_from_iter", "weight_from_iter")
ANNEAL_KEYS = ("start", "factor")
LATENT_LR_KEYS = ("start",)
SHIPPED_TRAIN: dict[str, Any] = {"pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
                                 "latent_lr": {"start": 0.5}}
"""The training ingredients of the shipped options (round 3's learning curves: plain L1 and the
latent weights' lr decay won at 8k over the curriculum and a fixed lr); beside
:data:`~bsr_plugin.integrations.basicsr.archs.SHIPPED_UNIT`."""


def schedule_problems(schedule: Any, total_iter: Any) -> list[str]:
    """Problems with ``train.binarize_schedule`` (checked by the preflight and again here): a
    mapping of the keys ``SCHEDULE_KEYS`` to integer iterations in ``[0, total_iter]``."""
    if schedule is None:
        return []
    if not isinstance(schedule, Mapping):
        return [f"train.binarize_schedule must be a mapping {{act_from_iter: N, weight_from_iter: N}}, got "
                f"{str(schedule)[:80]!r}"]
    problems = []
    unknown = sorted(str(k) for k in schedule if k not in SCHEDULE_KEYS)
    if unknown:
        problems.append(f"train.binarize_schedule: unknown keys {unknown}; known: {', '.join(SCHEDULE_KEYS)}")
    total = total_iter if isinstance(total_iter, int) and not isinstance(total_iter, bool) else None
    for key in SCHEDULE_KEYS:
        value = schedule.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (total is not None and value > total):
            problems.append(f"train.binarize_schedule.{key} = {value!r} lies outside [0, total_iter={total_iter}]; "
                            "give the iteration from which it binarizes")
    return problems


def anneal_problems(anneal: Any) -> list[str]:
    """Problems with ``train.prior_anneal`` (checked by the preflight and again here): a mapping
    ``{start: progress in [0, 1), factor: number >= 1}``."""
    if anneal is None:
        return []
    if not isinstance(anneal, Mapping):
        return [f"train.prior_anneal must be a mapping {{start: 0.667, factor: 10}}, got {str(anneal)[:80]!r}"]
    problems = []
    unknown = sorted(str(k) for k in anneal if k not in ANNEAL_KEYS)
    if unknown:
        problems.append(f"train.prior_anneal: unknown keys {unknown}; known: {', '.join(ANNEAL_KEYS)}")
    start, factor = anneal.get("start", 0.667), anneal.get("factor", 10.0)
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
        problems.append(f"train.prior_anneal.start = {start!r}: give the progress (iteration / total_iter) in "
                        "[0, 1) from which the prior widens")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor <= 1e3:
        problems.append(f"train.prior_anneal.factor = {factor!r}: give how many times wider the prior ends, "
                        "a number in [1, 1000]")
    return problems


def latent_lr_problems(latent_lr: Any) -> list[str]:
    """Problems with ``train.latent_lr``: a mapping ``{start: progress in [0, 1)}``."""
    if latent_lr is None:
        return []
    if not isinstance(latent_lr, Mapping):
        return [f"train.latent_lr must be a mapping {{start: 0.5}}, got {str(latent_lr)[:80]!r}"]
    problems = [f"train.latent_lr: unknown keys {sorted(str(k) for k in latent_lr if k not in LATENT_LR_KEYS)}; "
                f"known: {', '.join(LATENT_LR_KEYS)}"] if any(k not in LATENT_LR_KEYS for k in latent_lr) else []
    start = latent_lr.get("start", 0.5)
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 1:
        problems.append(f"train.latent_lr.start = {start!r}: give the progress (iteration / total_iter) in [0, 1) "
                        "from which the latent weights' learning rate decays to 0")
    return problems


def latent_lr_factor(progress: float, start: float) -> float:
    """1 until ``start``, then a half cosine to 0 at progress 1."""
    if progress <= start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (min(progress, 1.0) - start) / (1.0 - start)))


def annealed_a(a0: float, progress: float, start: float, factor: float) -> float:
    """The prior half-width at ``progress``: ``a0`` until ``start``, then geometric to
    ``factor * a0`` at progress 1."""
    if progress <= start:
        return a0
    return a0 * factor ** ((min(progress, 1.0) - start) / (1.0 - start))


class BinarySRModel(SafeModelMixin, SRModel):
    """SRModel for binarized networks (prior projection, curriculum, staged binarization,
    distillation). Checkpoints (``pretrain_network_g``, the teacher) load with weights only;
    checkpoints and training states are written atomically (:class:`.safe_models.SafeModelMixin`)."""

    def __init__(self, opt: dict[str, Any]) -> None:
        super().__init__(opt)
        if not any(True for _ in binary_layers(self.get_bare_model(self.net_g))):
            raise OptionsError(f"BinarySRModel needs a binarized network_g, but {opt['network_g'].get('type')!r} has "
                               "no binarized layer; use type BinarizedArch (with arch: {type: ...}), EDSRBin or "
                               "MSRResNetBin, or model_type SRModel for a float network")

    # -- set-up ---------------------------------------------------------------------------
    def init_training_settings(self) -> None:
        train_opt = self.opt["train"]
        self.project_prior = bool(train_opt.get("project_prior", True))
        self.calibration_pending = bool(train_opt.get("calibrate_scales", True))
        problems = schedule_problems(train_opt.get("binarize_schedule"), train_opt["total_iter"])
        if problems:
            raise OptionsError("; ".join(problems))
        schedule = train_opt.get("binarize_schedule") or {}
        self.act_from = int(schedule.get("act_from_iter", 0))
        self.weight_from = int(schedule.get("weight_from_iter", 0))
        self.total_iter = int(train_opt["total_iter"])
        problems = anneal_problems(train_opt.get("prior_anneal")) + latent_lr_problems(train_opt.get("latent_lr"))
        if problems:
            raise OptionsError("; ".join(problems))
        self.anneal = dict(train_opt.get("prior_anneal") or {}) or None
        self.latent_lr = dict(train_opt["latent_lr"]) if train_opt.get("latent_lr") is not None else None
        self.prior_a0 = {name: layer.prior_a for name, layer in binary_layers(self.get_bare_model(self.net_g))}
        self.cri_prior = build_loss(train_opt["prior_opt"]).to(self.device) if train_opt.get("prior_opt") else None
        self.distiller = self._build_distiller(train_opt.get("distill"))
        super().init_training_settings()

    def _build_distiller(self, opt: Any) -> Distiller | None:
        """The frozen teacher of ``train.distill`` with its weights, on this model's device."""
        if not opt:
            return None
        problems = check_distill_options(opt)
        if problems:
            raise OptionsError("; ".join(problems))
        teacher = build_network(dict(opt["network"])).to(self.device)
        self.load_network(teacher, opt["pretrain"], opt.get("strict_load", True), opt.get("param_key", "params_ema"))
        distiller = Distiller(teacher, self.get_bare_model(self.net_g), opt.get("output_weight", 1.0),
                              opt.get("feature_weight", 0.0), opt.get("features"))
        get_root_logger().info(f"distilling from a frozen {type(teacher).__name__} teacher ({opt['pretrain']}); "
                               f"feature terms at {len(distiller.names)} modules")
        return distiller

    def setup_optimizers(self) -> None:
        """Adam (BasicSR's only optimizer) with the learned scales in a group without weight decay
        and, with ``latent_lr``, the latent weights in a group of their own."""
        train_opt = self.opt["train"]
        net = self.get_bare_model(self.net_g)
        scales = {id(p) for p in scale_parameters(net)}
        own_group = train_opt.get("latent_lr") is not None
        latents = {id(layer.weight) for _, layer in binary_layers(net)} if own_group else set()
        logger = get_root_logger()
        groups: list[list[nn.Parameter]] = [[], [], []]
        for name, p in net.named_parameters():
            if not p.requires_grad:
                logger.warning(f"Params {name} will not be optimized.")
                continue
            groups[1 if id(p) in scales else 2 if id(p) in latents else 0].append(p)
        optim_opt = dict(train_opt["optim_g"])
        optim_type = optim_opt.pop("type")
        param_groups = [{"params": groups[0]}]
        if groups[1]:
            param_groups.append({"params": groups[1], "weight_decay": 0.0})
        if groups[2]:
            param_groups.append({"params": groups[2], "bsr_latent": True})
        self.optimizer_g = self.get_optimizer(optim_type, param_groups, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    # -- one step ---------------------------------------------------------------------------
    def _apply_schedule(self, current_iter: int) -> None:
        act, weight = current_iter >= self.act_from, current_iter >= self.weight_from
        for net in (self.get_bare_model(self.net_g), getattr(self, "net_g_ema", None)):
            if net is not None:
                set_binarization(net, act=act, weight=weight)
        if self.anneal is not None:
            progress = current_iter / self.total_iter
            start, factor = self.anneal.get("start", 0.667), self.anneal.get("factor", 10.0)
            for name, layer in binary_layers(self.get_bare_model(self.net_g)):
                a0 = self.prior_a0.get(name)
                if a0 is not None:
                    layer.prior_a = annealed_a(a0, progress, start, factor)

    @torch.no_grad()
    def _calibrate(self) -> None:
        """Calibrate the learned scales on the first batch; all ranks end with the mean."""
        net = self.get_bare_model(self.net_g)
        names = calibrate_scales_(net, self.lq)
        layers = [layer for _, layer in binary_layers(net) if layer.scale is not None]
        if self.opt["dist"] and names:
            import torch.distributed as dist

            for layer in layers:
                dist.all_reduce(layer.scale.data)
                layer.scale.data.div_(self.opt["world_size"])
        if hasattr(self, "net_g_ema"):
            ema = dict(binary_layers(self.net_g_ema))
            for name, layer in binary_layers(net):
                if layer.scale is not None:
                    ema[name].scale.copy_(layer.scale)
                    ema[name].calibrated.copy_(layer.calibrated)
        if names:
            get_root_logger().info(f"calibrated the learned scales of {len(names)} binarized layers on the first batch")
        self.calibration_pending = False

    def optimize_parameters(self, current_iter: int) -> None:
        if self.calibration_pending:
            self._calibrate()
        self._apply_schedule(current_iter)
        if hasattr(self.cri_pix, "set_progress"):
            self.cri_pix.set_progress(current_iter / self.total_iter)
        self.optimizer_g.zero_grad()
        logging_now = current_iter % self.opt["logger"]["print_freq"] == 0
        with branch_ratios(self.get_bare_model(self.net_g)) if logging_now else _nothing() as ratios:
            self.output = self.net_g(self.lq)

        loss_dict = {}
        l_total = 0
        if self.cri_pix:
            loss_dict["l_pix"] = self.cri_pix(self.output, self.gt)
            l_total = l_total + loss_dict["l_pix"]
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for key, value in (("l_percep", l_percep), ("l_style", l_style)):
                if value is not None:
                    loss_dict[key] = value
                    l_total = l_total + value
        if self.cri_prior:
            loss_dict["l_prior"] = self.cri_prior(self.get_bare_model(self.net_g))
            l_total = l_total + loss_dict["l_prior"]
        if self.distiller is not None:
            for key, value in self.distiller.losses(self.lq, self.output).items():
                loss_dict[key] = value
                l_total = l_total + value
        l_total.backward()
        if self.latent_lr is not None:
            factor = latent_lr_factor(current_iter / self.total_iter, self.latent_lr.get("start", 0.5))
            for group in self.optimizer_g.param_groups:
                if group.get("bsr_latent"):
                    group["lr"] = self.optimizer_g.param_groups[0]["lr"] * factor
        self.optimizer_g.step()
        if self.project_prior:
            project_to_prior_(self.get_bare_model(self.net_g))

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if logging_now:
            self._log_binary_state(ratios)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """SRModel's test on the bare network: in a distributed run only rank 0 validates, and a
        DistributedDataParallel forward would broadcast buffers (``sign_ref``) to ranks that are
        not listening."""
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq)
        net.train(was_training)

    @torch.no_grad()
    def _log_binary_state(self, ratios: Mapping[str, tuple[float, float]]) -> None:
        net = self.get_bare_model(self.net_g)
        logger = get_root_logger()
        flips = flip_ratios(net)
        if flips:
            self.log_dict["flip_ratio"] = sum(flips.values()) / len(flips)
            logger.info("flip ratio per layer: " + ", ".join(f"{k}={v:.2e}" for k, v in flips.items()))
        edge = edge_fraction(net)
        if edge is not None:
            self.log_dict["prior_edge"] = edge
        if ratios:
            self.log_dict["branch_ratio"] = sum(r for r, _ in ratios.values()) / len(ratios)
            logger.info("branch/stream ratio (stream mean |x|) per layer: "
                        + ", ".join(f"{k}={r:.3f} ({m:.3g})" for k, (r, m) in ratios.items()))
        if hasattr(self.cri_pix, "quantile"):
            self.log_dict["curriculum_q"] = self.cri_pix.quantile()


@contextmanager
def _nothing() -> Iterator[dict]:
    yield {}


MODELS = (BinarySRModel,)
