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
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..core.options import LayerOptions, check_choice
from ..errors import ConfigError

ACTIONS = ("binarize", "keep")
KEYWORDS = ("first", "last", "upsampler")
NESTED_SKIPS = ("cut_all", "cut_first", "cut_last", "keep")
RELU_POLICIES = ("leaky", "identity", "keep")

Rule = tuple[str, str]
DEFAULT_RULES: tuple[Rule, ...] = (
    ("binarize", "type:Conv2d"),
    ("keep", "first"),
    ("keep", "last"),
    ("keep", "upsampler?"),
)


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
class BinarizeConfig(LayerOptions):
    """How :func:`bsr_plugin.convert` binarizes a network (method.md: "Our specification").

    The per-layer fields (``prior_a``, ``act_grad``, ``scale``, ``binarize_act``,
    ``binarize_weight``, ``shortcut``, ``rsign``, ``rprelu``) are those of
    :class:`~bsr_plugin.LayerOptions`, validated there; this class adds how the network is
    rewritten.

    Args:
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

    nested_skips: str = "cut_all"
    relu: str = "leaky"
    leaky_slope: float = 0.1
    rules: tuple[Rule, ...] = field(default=DEFAULT_RULES)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("nested_skips", self.nested_skips, NESTED_SKIPS)
        check_choice("relu", self.relu, RELU_POLICIES)
        if isinstance(self.leaky_slope, bool) or not isinstance(self.leaky_slope, (int, float)) \
                or not 0 <= self.leaky_slope < 1:
            raise ConfigError(f"binarize.leaky_slope must lie in [0, 1), got {self.leaky_slope!r}")
        if isinstance(self.rules, (str, bytes)) or not isinstance(self.rules, (list, tuple)):
            raise ConfigError(f"binarize.rules must be a list of rules, got {self.rules!r}")
        object.__setattr__(self, "rules", tuple(_parse_rule(r) for r in self.rules))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-safe) that :meth:`from_dict` turns back into this config."""
        out = dataclasses.asdict(self)
        out["rules"] = [{action: pattern} for action, pattern in self.rules]
        return out

    def replace(self, **changes: Any) -> BinarizeConfig:
        """A copy with ``changes`` applied; an unknown keyword is an error that names it."""
        self.check_keys(changes.keys(), where="convert()")
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, config: BinarizeConfig | Mapping[str, Any] | None) -> BinarizeConfig:
        if isinstance(config, cls) or config is None or isinstance(config, Mapping):
            return super().coerce(config)
        raise ConfigError(f"config must be a BinarizeConfig, a dict or None, got {type(config).__name__}")
