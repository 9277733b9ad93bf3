"""BinarizeConfig: frozen, serialisable, strict."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from bsr_plugin import BinarizeConfig, ConfigError


def test_round_trips_dict_and_yaml():
    cfg = BinarizeConfig(prior_a=1e-3, act_grad="ste", scale="mean_abs", shortcut="identity", nested_skips="cut_last",
                         relu="identity", rules=[{"binarize": "type:Conv2d"}, {"keep": "re:body\\.0\\..*"},
                                                 ("binarize", "upsampler?")])
    assert BinarizeConfig.from_dict(cfg.to_dict()) == cfg
    text = yaml.safe_dump(cfg.to_dict())
    assert BinarizeConfig.from_dict(yaml.safe_load(text)) == cfg
    assert BinarizeConfig.from_dict(None) == BinarizeConfig()


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BinarizeConfig().prior_a = 1.0


@pytest.mark.parametrize("data, match", [
    ({"prior_a": 0}, "prior_a must be a number > 0"),
    ({"prior_a": -1e-3}, "prior_a must be a number > 0"),
    ({"prior_a": "big"}, "prior_a must be a number > 0"),
    ({"priora": 1e-2}, "unknown key 'priora'; did you mean 'prior_a'"),
    ({"act_grad": "tanh"}, "act_grad"),
    ({"rules": [{"skip": "first"}]}, "unknown action 'skip'"),
    ({"rules": [{"keep": "re:("}]}, "bad regular expression"),
    ({"rules": "first"}, "must be a list"),
    ({"binarize_act": "yes"}, "true or false"),
])
def test_bad_values_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        BinarizeConfig.from_dict(data)


def test_replace_rejects_unknown_keyword():
    with pytest.raises(ConfigError, match="unknown key 'alpha'"):
        BinarizeConfig().replace(alpha=1)
