"""Every shipped YAML: it parses as BasicSR parses it, every type resolves in the registries,
no key is unknown, the scale agrees with folder names and filename templates, the network
builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bsr_plugin.integrations.basicsr.cli import parse_options
from bsr_plugin.integrations.basicsr.options_check import check_options

from ..conftest import REPO

TRAIN = sorted((REPO / "options").glob("*.yml"))
TEST = sorted((REPO / "options" / "test").glob("*.yml"))


def _parsed(path: Path, is_train: bool) -> dict:
    opt = parse_options(["-opt", str(path)], is_train)
    for key in ("dist", "rank", "world_size", "auto_resume", "is_train"):
        opt.pop(key)
    return opt


def test_the_expected_files_ship():
    names = {p.name for p in TRAIN}
    assert {"edsr_bin.yml", "edsr_bin_x2.yml", "edsr_bin_x3.yml", "msrresnet_bin.yml", "edsr.yml", "edsr_x2.yml",
            "edsr_x3.yml", "msrresnet.yml"} <= names
    assert names == {p.name for p in TEST}


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAIN + TEST, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_options(path):
    is_train = path.parent.name != "test"
    opt = _parsed(path, is_train)
    check_options(opt, is_train=is_train, check_data=False)
    scale = opt["scale"]
    assert opt["network_g"]["upscale"] == scale
    assert re.search(rf"_x{scale}$", opt["name"])
    for ds in opt["datasets"].values():
        assert ds["filename_tmpl"] == f"{{}}x{scale}"
        assert ds["dataroot_lq"].endswith(f"X{scale}")
        assert not Path(ds["dataroot_gt"]).is_absolute()
        if ds.get("gt_size"):
            assert ds["gt_size"] == 48 * scale
    for metric in opt["val"]["metrics"].values():
        assert metric["test_y_channel"] and metric["crop_border"] == scale
    binary = opt["model_type"] == "BinarySRModel"
    assert binary == ("bin" in path.stem)
    if is_train:
        train = opt["train"]
        assert train["total_iter"] == 300000 and train["scheduler"]["milestones"] == [200000]
        assert train["optim_g"]["lr"] == 2e-4 and opt["datasets"]["train"]["batch_size_per_gpu"] == 16
        assert train["pixel_opt"]["type"] == "L1Loss"  # the curriculum lost at 8k (round 3)
        assert ("latent_lr" in train) == binary


@pytest.mark.parametrize("name", ["edsr_bin.yml", "edsr_bin_x2.yml", "edsr_bin_x3.yml", "msrresnet_bin.yml",
                                  "edsr_bin_from_float.yml"])
def test_binarized_options_ship_the_round3_unit(name):
    """Training and test options build the recipe the benchmark chose (``SHIPPED_UNIT``, trained
    with ``SHIPPED_TRAIN``), and agree with each other, so ``basicsr test`` rebuilds the network
    ``basicsr train`` wrote."""
    import yaml

    from bsr_plugin.integrations.basicsr.archs import SHIPPED_UNIT
    from bsr_plugin.integrations.basicsr.models import SHIPPED_TRAIN

    opts = [yaml.safe_load((REPO / "options" / d / name).read_text()) for d in ("", "test")]
    train, test = (o["network_g"] for o in opts)
    assert train["block"] == SHIPPED_UNIT["block"]
    assert SHIPPED_UNIT["binarize"].items() <= train["binarize"].items()
    assert train == test
    assert SHIPPED_TRAIN.items() <= opts[0]["train"].items()
