"""BinarySRModel and the registry entries, in process (no subprocess, tiny networks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bsr_plugin.integrations.basicsr  # noqa: F401  (registers)
from bsr_plugin import is_binary
from bsr_plugin.integrations.basicsr import register

from ..nets import assert_initialised_from


def _opt(tmp_path, **train):
    train_opt = {"ema_decay": 0, "optim_g": {"type": "Adam", "lr": 1e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
                 "scheduler": {"type": "MultiStepLR", "milestones": [100], "gamma": 0.5}, "total_iter": 10,
                 "warmup_iter": -1, "pixel_opt": {"type": "CurriculumL1Loss", "loss_weight": 1.0}}
    train_opt.update(train)
    return {"name": "unit", "model_type": "BinarySRModel", "scale": 2, "num_gpu": 0, "dist": False, "rank": 0,
            "world_size": 1, "is_train": True, "manual_seed": 0,
            "network_g": {"type": "EDSRBin", "num_feat": 8, "num_block": 2, "upscale": 2,
                          "binarize": {"prior_a": 1e-2}},
            "path": {"pretrain_network_g": None, "strict_load_g": True, "models": str(tmp_path)},
            "train": train_opt, "logger": {"print_freq": 1}}


def _model(opt):
    from basicsr.models import build_model

    return build_model(opt)


def _step(model, it):
    model.feed_data({"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 16, 16)})
    model.optimize_parameters(it)


def test_registration_is_idempotent():
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

    register()
    register()
    for reg, name in ((ARCH_REGISTRY, "BinarizedArch"), (ARCH_REGISTRY, "EDSRBin"), (ARCH_REGISTRY, "MSRResNetBin"),
                      (LOSS_REGISTRY, "UniformPriorLoss"), (LOSS_REGISTRY, "CurriculumL1Loss"),
                      (MODEL_REGISTRY, "BinarySRModel"), (DATASET_REGISTRY, "BicubicPairDataset")):
        assert name in reg


def test_ema_network_is_binarized_and_projected(tmp_path):
    model = _model(_opt(tmp_path, ema_decay=0.9, prior_opt={"type": "UniformPriorLoss", "loss_weight": 1.0}))
    assert any(is_binary(m) for m in model.net_g_ema.modules())
    for it in range(1, 4):
        _step(model, it)
    for net in (model.net_g, model.net_g_ema):
        for m in net.modules():
            if is_binary(m):
                assert m.weight.abs().max() <= m.prior_a
    assert {"l_pix", "l_prior", "flip_ratio", "curriculum_q"} <= set(model.log_dict)
    assert 0 <= model.log_dict["flip_ratio"] <= 1


def test_first_step_calibrates_scales_of_net_and_ema(tmp_path):
    model = _model(_opt(tmp_path, ema_decay=0.9))
    before = [m.scale.clone() for m in model.net_g.modules() if is_binary(m)]
    _step(model, 1)
    after = [m for m in model.net_g.modules() if is_binary(m)]
    ema = [m for m in model.net_g_ema.modules() if is_binary(m)]
    assert all(float(m.calibrated) > 0 for m in after + ema)
    assert not any(torch.equal(b, m.scale) for b, m in zip(before, after))
    model2 = _model(_opt(tmp_path, calibrate_scales=False))
    _step(model2, 1)
    assert all(float(m.calibrated) == 0 for m in model2.net_g.modules() if is_binary(m))


def test_float_basicsr_checkpoint_initialises_binarized_edsr(tmp_path):
    from basicsr.archs.edsr_arch import EDSR

    float_net = EDSR(3, 3, num_feat=8, num_block=2, upscale=2)
    path = tmp_path / "float_edsr.pth"
    torch.save({"params": float_net.state_dict()}, path)  # BasicSR's save_network format
    opt = _opt(tmp_path, ema_decay=0.9)
    opt["path"]["pretrain_network_g"] = str(path)
    model = _model(opt)
    for net in (model.net_g, model.net_g_ema):
        assert_initialised_from(float_net, net)


def test_staged_binarization(tmp_path):
    model = _model(_opt(tmp_path, binarize_schedule={"act_from_iter": 0, "weight_from_iter": 3}))
    layers = [m for m in model.net_g.modules() if is_binary(m)]
    _step(model, 1)
    assert all(m.binarize_act and not m.binarize_weight for m in layers)
    _step(model, 3)
    assert all(m.binarize_act and m.binarize_weight for m in layers)
    with pytest.raises(ValueError, match="weight_from_iter = 50 lies outside"):
        _model(_opt(tmp_path, binarize_schedule={"weight_from_iter": 50}))
    with pytest.raises(ValueError, match="unknown keys"):
        _model(_opt(tmp_path, binarize_schedule={"weights_from": 5}))


def test_scales_out_of_weight_decay(tmp_path):
    opt = _opt(tmp_path)
    opt["train"]["optim_g"]["weight_decay"] = 1e-4
    model = _model(opt)
    groups = model.optimizer_g.param_groups
    scales = {id(m.scale) for m in model.net_g.modules() if is_binary(m)}
    assert groups[0]["weight_decay"] == 1e-4 and not scales & {id(p) for p in groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and {id(p) for p in groups[1]["params"]} == scales


def test_float_network_refused(tmp_path):
    opt = _opt(tmp_path)
    opt["network_g"] = {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "upscale": 2}
    with pytest.raises(ValueError, match="BinarySRModel needs a binarized network_g"):
        _model(opt)


def test_binarized_arch_wraps_any_registered_arch():
    from basicsr.archs import build_network

    net = build_network({"type": "BinarizedArch", "arch": {"type": "RCAN", "num_in_ch": 3, "num_out_ch": 3,
                                                           "num_feat": 8, "num_group": 1, "num_block": 1,
                                                           "squeeze_factor": 4, "upscale": 2},
                         "binarize": {"prior_a": 1e-3}})
    assert net.bsr_report.binarized and all(m.prior_a == 1e-3 for m in net.modules() if is_binary(m))
    assert net.bsr_build["spec"]["arch"]["type"] == "RCAN" and net.bsr_build["builder"] == "basicsr"


def test_losses_follow_basicsr_contract():
    from basicsr.losses import build_loss

    prior = build_loss({"type": "UniformPriorLoss", "loss_weight": 2.0, "reduction": "sum"})
    curr = build_loss({"type": "CurriculumL1Loss", "loss_weight": 0.5, "q0": 0.5})
    curr.set_progress(1.0)
    a, b = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
    assert torch.equal(curr(a, b), 0.5 * nn.functional.l1_loss(a, b))
    with pytest.raises(ValueError, match="reduction"):
        build_loss({"type": "CurriculumL1Loss", "reduction": "none"})
    with pytest.raises(ValueError, match="reduction"):
        build_loss({"type": "UniformPriorLoss", "reduction": "none"})
    net = nn.Sequential(nn.Conv2d(3, 3, 3))
    assert prior(net).item() == 0.0


def test_prior_anneal_widens_the_box_over_the_last_third(tmp_path):
    from bsr_plugin.integrations.basicsr.models import annealed_a

    model = _model(_opt(tmp_path, total_iter=9, prior_anneal={"start": 0.667, "factor": 10}))
    layers = [m for m in model.net_g.modules() if is_binary(m)]
    _step(model, 6)
    assert all(m.prior_a == pytest.approx(1e-2) for m in layers)  # before 2/3 of the run
    _step(model, 9)
    assert all(m.prior_a == pytest.approx(0.1) for m in layers)  # x10 at the end, and projected there
    assert all(m.weight.abs().max() <= m.prior_a for m in layers)
    assert annealed_a(0.01, 0.8335, 0.667, 10) == pytest.approx(0.01 * 10 ** 0.5, rel=1e-3)  # geometric
    assert 0 <= model.log_dict["prior_edge"] <= 1
    for bad, match in (({"start": 1.0}, "start = 1.0"), ({"factor": 0.5}, "factor = 0.5"),
                       ({"begin": 0.5}, "unknown keys")):
        with pytest.raises(ValueError, match=match):
            _model(_opt(tmp_path, prior_anneal=bad))


def test_branch_ratio_logged_for_layers_with_a_shortcut(tmp_path, caplog):
    import logging

    opt = _opt(tmp_path)
    opt["network_g"].update(block="bbcu", binarize={"prior_a": 1e-2, "align": 0.1})
    model = _model(opt)
    with caplog.at_level(logging.INFO, logger="basicsr"):
        _step(model, 1)
    assert model.log_dict["branch_ratio"] == pytest.approx(0.1, rel=0.05)  # aligned on this very batch
    assert "branch/stream ratio (stream mean |x|) per layer: body.0.conv1=0.1" in caplog.text


def test_latent_lr_decays_only_the_latent_weights(tmp_path):
    from bsr_plugin.integrations.basicsr.models import latent_lr_factor

    model = _model(_opt(tmp_path, total_iter=10, latent_lr={"start": 0.5}))
    groups = model.optimizer_g.param_groups
    latent = [g for g in groups if g.get("bsr_latent")]
    weights = {id(m.weight) for m in model.net_g.modules() if is_binary(m)}
    assert len(latent) == 1 and {id(p) for p in latent[0]["params"]} == weights
    _step(model, 5)
    assert latent[0]["lr"] == pytest.approx(groups[0]["lr"])  # until half way: the common schedule
    _step(model, 8)
    assert latent[0]["lr"] == pytest.approx(groups[0]["lr"] * latent_lr_factor(0.8, 0.5))
    assert latent_lr_factor(1.0, 0.5) == pytest.approx(0.0) and latent_lr_factor(0.75, 0.5) == pytest.approx(0.5)
    assert not any(g.get("bsr_latent") for g in _model(_opt(tmp_path)).optimizer_g.param_groups)  # off: one group
    with pytest.raises(ValueError, match="latent_lr.start = 1.5"):
        _model(_opt(tmp_path, latent_lr={"start": 1.5}))
