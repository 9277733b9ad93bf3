"""``BinarizeConfig``: one frozen, serialisable description of how to binarize a network.

It travels as a plain dict (``to_dict`` / ``from_dict``), so a BasicSR YAML can carry it
under ``binarize:``. Layers are chosen by one mechanism, ordered rules; the last rule that
matches a layer decides it (as in ``.gitignore``)::

    rules:
      - binarize: "type:Conv2d"     # every Conv2d ...
      - keep: first                  # ... but the first (image to features),
      - keep: last                   # the last (features to image),
      - keep: "upsampler?"           # and the upsampler convs stay full precision

A pattern is a glob on the module's qualified name (``body.*.conv1``), ``re:<regex>``
(full match), ``type:<ClassName>`` (the class or one of its bases), or a keyword: ``first``
(every conv/linear that reads the network input directly: the stem), ``last`` (the last
conv/linear to run), ``upsampler`` (convs that feed a PixelShuffle or follow an
interpolation). A pattern matches a layer if it matches the layer or one of its parent modules.
A rule that matches nothing is an error naming it, unless the pattern ends in ``?`` (optional).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .binarizers import ACT_GRADS, SCALES

ACTIONS = ("binarize", "keep")
KEYWORDS = ("first", "last", "upsampler")
SHORTCUT_POLICIES = ("auto", "identity", "none")
NESTED_SKIPS = ("cut_all", "cut_first", "cut_last", "keep")
RELU_POLICIES = ("leaky", "identity", "keep")

Rule = tuple[str, str]
DEFAULT_RULES: tuple[Rule, ...] = (
    ("binarize", "type:Conv2d"),
    ("keep", "first"),
    ("keep", "last"),
    ("keep", "upsampler?"),
)


class ConfigError(ValueError):
    """A binarize configuration that cannot be used as given."""


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"binarize.{name}: {value!r} is not one of {choices}")


def _parse_rule(rule: Any) -> Rule:
    """A rule from YAML/dict form: ``{binarize: pat}``, ``{keep: pat}`` or ``(action, pat)``."""
    if isinstance(rule, Mapping):
        if len(rule) != 1:
            raise ConfigError(f"binarize.rules: each rule has exactly one key (binarize or keep), got {dict(rule)}")
        ((action, pattern),) = rule.items()
    elif isinstance(rule, (list, tuple)) and len(rule) == 2:
        action, pattern = rule
    else:
        raise ConfigError(f"binarize.rules: cannot read rule {rule!r}; write it as {{binarize: <pattern>}} "
                          "or {keep: <pattern>}")
    if action not in ACTIONS:
        raise ConfigError(f"binarize.rules: unknown action {action!r} in {rule!r}; use one of {ACTIONS}")
    if not isinstance(pattern, str) or not pattern.strip("?"):
        raise ConfigError(f"binarize.rules: pattern in {rule!r} must be a non-empty string")
    body = pattern.rstrip("?")
    if body.startswith("re:"):
        try:
            re.compile(body[3:])
        except re.error as err:
            raise ConfigError(f"binarize.rules: bad regular expression in {rule!r}: {err}") from None
    if body.startswith("type:") and not body[5:]:
        raise ConfigError(f"binarize.rules: {rule!r} names no type after 'type:'")
    return (action, pattern)


@dataclass(frozen=True)
class BinarizeConfig:
    """How :func:`bsr_plugin.convert` binarizes a network (method.md: "Our specification").

    Args:
        prior_a: half-width ``a`` of the compact uniform prior U(-a, a) on every latent
            weight; ``None`` trains the latent weights unconstrained (plain BNN).
        act_grad: activation gradient estimator: ``approxsign`` | ``ste`` | ``identity``.
        scale: per-output-channel weight scale: ``learned`` | ``mean_abs`` | ``none``.
        binarize_act: binarize activations (1-bit inputs to every binarized layer).
        binarize_weight: binarize weights.
        shortcut: real identity shortcut around each binarized layer: ``auto`` (identity, or
            repeat / mean where channel counts divide), ``identity`` (equal shapes only),
            ``none``.
        nested_skips: where the network's own skip already spans a binarized layer's shortcut
            (an EDSR block around two shortcut convs would double the signal in every block):
            ``cut_all`` (default) drops every added shortcut on such a path, so shortcuts are
            added only where the network has no full-precision path of its own (measured on
            EDSR, benchmarks/README.md: added shortcuts inside its skipped blocks cost 0.1 to
            0.25 dB and doubled the spread between seeds); ``cut_first`` / ``cut_last`` drop
            the fewest, nearest the skip's start / end; ``keep`` keeps all (and doubles).
        relu: what happens to a ReLU whose output feeds a binarized layer (the sign of a
            non-negative input is constant +1): ``leaky`` (LeakyReLU(leaky_slope)),
            ``identity`` (drop it) or ``keep``.
        leaky_slope: negative slope used by ``relu: leaky``.
        rules: ordered layer rules, see the module docstring.
    """

    prior_a: Optional[float] = 1e-2
    act_grad: str = "approxsign"
    scale: str = "learned"
    binarize_act: bool = True
    binarize_weight: bool = True
    shortcut: str = "auto"
    nested_skips: str = "cut_all"
    relu: str = "leaky"
    leaky_slope: float = 0.1
    rules: tuple[Rule, ...] = field(default=DEFAULT_RULES)

    def __post_init__(self) -> None:
        if self.prior_a is not None:
            if isinstance(self.prior_a, bool) or not isinstance(self.prior_a, (int, float)) or not self.prior_a > 0:
                raise ConfigError(f"binarize.prior_a must be a number > 0 (or null for no prior), got {self.prior_a!r}")
            object.__setattr__(self, "prior_a", float(self.prior_a))
        _check_choice("act_grad", self.act_grad, ACT_GRADS)
        _check_choice("scale", self.scale, SCALES)
        _check_choice("shortcut", self.shortcut, SHORTCUT_POLICIES)
        _check_choice("nested_skips", self.nested_skips, NESTED_SKIPS)
        _check_choice("relu", self.relu, RELU_POLICIES)
        for name in ("binarize_act", "binarize_weight"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"binarize.{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 <= self.leaky_slope < 1:
            raise ConfigError(f"binarize.leaky_slope must lie in [0, 1), got {self.leaky_slope!r}")
        if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, (list, tuple)):
            raise ConfigError(f"binarize.rules must be a list of rules, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(_parse_rule(r) for r in self.rules))

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-safe) that :meth:`from_dict` turns back into this config."""
        out = dataclasses.asdict(self)
        out["rules"] = [{action: pattern} for action, pattern in self.rules]
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_keys(cls, keys: Any, where: str = "binarize") -> None:
        """Raise naming every key that is not a field (with the closest field as a hint)."""
        names = cls.field_names()
        for key in keys:
            if key not in names:
                hint = difflib.get_close_matches(str(key), names, n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"{where}: unknown key {key!r}{tip} Known keys: {', '.join(names)}")

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> BinarizeConfig:
        """Build from a plain dict; an unknown key is an error that names it."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"binarize config must be a mapping, got {type(data).__name__}")
        cls.check_keys(data.keys())
        return cls(**dict(data))

    def replace(self, **changes: Any) -> BinarizeConfig:
        """A copy with ``changes`` applied; an unknown keyword is an error that names it."""
        self.check_keys(changes.keys(), where="convert()")
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, config: BinarizeConfig | Mapping[str, Any] | None) -> BinarizeConfig:
        if isinstance(config, cls):
            return config
        if config is None or isinstance(config, Mapping):
            return cls.from_dict(config)
        raise ConfigError(f"config must be a BinarizeConfig, a dict or None, got {type(config).__name__}")

    def layer_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every binarized layer built from this config."""
        return dict(act_grad=self.act_grad, scale=self.scale, prior_a=self.prior_a,
                    binarize_act=self.binarize_act, binarize_weight=self.binarize_weight)
