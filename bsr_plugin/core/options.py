"""``LayerOptions``: how one binarized layer binarizes, validated in one place.

The same fields are the layer keywords of :class:`~bsr_plugin.BinaryConv2d` /
:class:`~bsr_plugin.BinaryLinear` and the per-layer part of
:class:`~bsr_plugin.BinarizeConfig` (which subclasses this), so a BasicSR YAML, an MMCV
``conv_cfg``, a packed file and a Python call all spell and check them the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

from ..errors import ConfigError

ACT_GRADS = ("approxsign", "approxsign_scaled", "ste", "identity")
SCALES = ("learned", "mean_abs", "none")
SHORTCUTS = ("auto", "identity", "repeat", "mean", "none")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming ``binarize.<name>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"binarize.{name}: {value!r} is not one of {choices}")


def check_keys(keys: Iterable[Any], known: tuple[str, ...], where: str) -> None:
    """Raise :class:`ConfigError` naming the first unknown key, with the closest known one."""
    for key in keys:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: unknown key {key!r}{tip} Known keys: {', '.join(known)}")


@dataclass(frozen=True)
class LayerOptions:
    """Options of one binarized layer (method.md, "Our specification").

    Args:
        prior_a: half-width ``a`` of the compact uniform prior U(-a, a) on the latent weight;
            ``None`` trains the latent weight unconstrained (plain BNN).
        act_grad: activation gradient estimator: ``approxsign`` | ``approxsign_scaled`` (its
            window stretched to each input channel's mean magnitude in the batch) | ``ste`` |
            ``identity`` (see :mod:`bsr_plugin.core.binarizers`).
        scale: per-output-channel weight scale: ``learned`` | ``mean_abs`` | ``none``.
        binarize_act: binarize the layer's input (1-bit activations).
        binarize_weight: binarize the layer's weight (1-bit weights).
        shortcut: real identity shortcut around the layer: ``auto`` (identity for equal
            shapes, repeat / mean where the channel counts divide, else none), ``identity``
            (equal shapes only), ``repeat``, ``mean`` (must fit), ``none``.
        rsign: a learnable per-input-channel threshold before the sign, ``sign(x - beta)``
            (ReActNet's RSign; ``beta`` starts at 0).
        rprelu: a learnable activation on the binary branch, before the shortcut is added:
            ``t = y - gamma; t = t if t >= 0 else slope * t; y = t + zeta`` per output channel
            (ReActNet's RPReLU, placed as in BBCU; slope starts at 0.25, shifts at 0).
        align: residual alignment ratio ``rho`` for a layer with its own real shortcut: scale
            calibration (:func:`~bsr_plugin.calibrate_scales_`) makes the binary branch ``rho``
            times as large as its input (mean magnitudes on the first batch), so the
            full-precision path dominates (BBCU's residual alignment); ``None``: the branch is
            calibrated to the float layer's size. Layers without a shortcut ignore it.
    """

    prior_a: Optional[float] = 1e-2
    act_grad: str = "approxsign"
    scale: str = "learned"
    binarize_act: bool = True
    binarize_weight: bool = True
    shortcut: str = "auto"
    rsign: bool = False
    rprelu: bool = False
    align: Optional[float] = None

    def __post_init__(self) -> None:
        if self.prior_a is not None:
            if isinstance(self.prior_a, bool) or not isinstance(self.prior_a, (int, float)) or not self.prior_a > 0:
                raise ConfigError(f"binarize.prior_a must be a number > 0 (or null for no prior), got {self.prior_a!r}")
            object.__setattr__(self, "prior_a", float(self.prior_a))
        if self.align is not None:
            if isinstance(self.align, bool) or not isinstance(self.align, (int, float)) or not 0 < self.align <= 10:
                raise ConfigError(f"binarize.align must be a number in (0, 10] (or null: no alignment), "
                                  f"got {self.align!r}")
            object.__setattr__(self, "align", float(self.align))
        check_choice("act_grad", self.act_grad, ACT_GRADS)
        check_choice("scale", self.scale, SCALES)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        for name in ("binarize_act", "binarize_weight", "rsign", "rprelu"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"binarize.{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def layer_field_names(cls) -> tuple[str, ...]:
        """The fields a binarized layer takes (``LayerOptions``' own, also for subclasses)."""
        return tuple(f.name for f in dataclasses.fields(LayerOptions))

    @classmethod
    def check_keys(cls, keys: Iterable[Any], where: str = "binarize") -> None:
        """Raise naming every key that is not a field (with the closest field as a hint)."""
        check_keys(keys, cls.field_names(), where)

    def layer_options(self) -> LayerOptions:
        """Only the per-layer options (drops a subclass's network-level fields)."""
        return LayerOptions(**{name: getattr(self, name) for name in self.layer_field_names()})

    def layer_kwargs(self) -> dict[str, Any]:
        """The per-layer options as keyword arguments of a binarized layer."""
        return dataclasses.asdict(self.layer_options())

    @classmethod
    def from_kwargs(cls, where: str, **kwargs: Any) -> LayerOptions:
        """Build from keyword arguments, naming ``where`` (e.g. the layer class) for an unknown one."""
        check_keys(kwargs, cls.field_names(), where)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied; an unknown keyword is an error that names it."""
        self.check_keys(changes.keys(), where=f"{type(self).__name__}.replace()")
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``value`` as an instance of this class: itself, from a mapping, or the defaults for ``None``."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise ConfigError(f"expected a {cls.__name__}, a dict or None, got {type(value).__name__}")

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> Any:
        """Build from a plain dict (YAML/JSON form); an unknown key is an error that names it."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"binarize config must be a mapping, got {type(data).__name__}")
        cls.check_keys(data.keys())
        return cls(**cls._fields_from_dict(dict(data)))

    @classmethod
    def _fields_from_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-safe) that :meth:`from_dict` turns back into the same options."""
        return dataclasses.asdict(self)
