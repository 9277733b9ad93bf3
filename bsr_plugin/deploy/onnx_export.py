"""``export_onnx(model, path, sample)``: a binarized network as an ONNX graph that
onnxruntime (or any ONNX runtime) runs, with the binary pattern kept visible.

Every binarized layer becomes, in the graph::

    x -> GreaterOrEqual(x, 0) -> Where(+1, -1)      # sign(x), +1 at 0
      -> Pad(mode=constant, value=1)                 # +1 padding: the input stays strictly +-1
      -> Conv(W)  (+ bias)                           # W = alpha * sign(w), an initializer
      -> Add(shortcut(x))                            # the real identity shortcut, if any

``W`` holds exactly ``+-alpha`` per output channel (computed once from the network, so the
latent weights are not shipped), which lets a deployment tool recognise the
pattern and replace it with an XNOR-popcount kernel on the packed signs. While tracing,
:func:`bsr_plugin.sign` is spelled with these standard ops. Export uses the TorchScript
exporter (``dynamo=False``: no onnxscript needed) in eval mode, with height and width (and
batch) dynamic by default.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..core.layers import BinaryConv2d, BinaryLinear
from ..core.registry import binary_layers, form_of, is_binary, layer_channels, register_form, require_fully_binary
from ..core.replace import replace_modules
from ..errors import ConfigError
from ..fileio import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class FrozenBinaryLayer(nn.Module):
    """The export form of a binarized layer: it computes as the layer does, but with a stored
    ``alpha * sign(w)`` (an ONNX initializer holding exactly +-alpha) instead of binarizing its
    latent weight, which is then not shipped.

    Args:
        layer: the binarized layer (any type with the ``branch`` / ``_finish`` methods of
            :class:`~bsr_plugin.core.layers.BinaryLayerMixin`).
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.channels = layer_channels(layer)
        self.register_buffer("frozen_weight", layer.binary_weight().detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer.branch(x, self.layer._branch_bias(), weight=self.frozen_weight)
        return self.layer._finish(y, x, *self.channels)


register_form(BinaryConv2d, "export", FrozenBinaryLayer)
register_form(BinaryLinear, "export", FrozenBinaryLayer)


@torch.no_grad()
def freeze_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose binarized layers are in their export form
    (:class:`FrozenBinaryLayer`: computing with a stored ``alpha * sign(w)``, exactly the
    weight they compute with now); layers whose binarization is switched off are refused."""
    require_fully_binary(model, "the exported graph would not be binary")
    missing = sorted({type(m).__name__ for _, m in binary_layers(model) if form_of(m, "export") is None})
    if missing:
        raise ConfigError(f"no export form is registered for {', '.join(missing)}: register one with "
                          "bsr_plugin.core.registry.register_form(<type>, 'export', <module factory>)")

    def frozen(_name: str, module: nn.Module) -> Optional[nn.Module]:
        return form_of(module, "export")(module) if is_binary(module) else None

    return replace_modules(copy.deepcopy(model).eval().requires_grad_(False), frozen)


def export_onnx(model: nn.Module, path: Union[str, Path], sample: Tensor, *, opset: int = DEFAULT_OPSET,
                dynamic: bool = True, input_name: str = "lr", output_name: str = "sr",
                check: Optional[bool] = None) -> Path:
    """Export a binarized network to ONNX (the sign + pad(+1) + conv pattern stays visible).

    Args:
        model: the network (not modified; an eval-mode copy is exported).
        path: the ``.onnx`` file to write (atomically: a temporary file in the same folder,
            checked, fsynced, then renamed; a failure or a kill leaves an earlier file whole).
        sample: an input batch of the right shape, e.g. ``torch.rand(1, 3, 48, 48)``.
        opset: ONNX opset version.
        dynamic: make batch, height and width dynamic axes (else the sample's shape is fixed).
        input_name, output_name: graph input/output names.
        check: run ``onnx.checker`` on the result (default: when the onnx package is installed).

    Returns:
        The path written.
    """
    path = Path(path)
    frozen = freeze_for_export(model)
    sample = sample.detach()
    axes = None
    if dynamic:
        names: Sequence[str] = ("batch", "height", "width")
        axes = {input_name: {0: names[0], 2: names[1], 3: names[2]} if sample.dim() == 4 else {0: names[0]},
                output_name: {0: names[0], 2: "out_height", 3: "out_width"} if sample.dim() == 4 else {0: names[0]}}
    with atomic_path(path) as tmp:  # a kill or a failure leaves the previous file whole
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(frozen, (sample,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=[output_name], dynamic_axes=axes,
                              do_constant_folding=True)
        if check is None or check:
            try:
                import onnx
            except ImportError:
                if check:
                    raise ImportError("check=True needs the onnx package: pip install 'bsr_plugin[onnx]'") from None
            else:
                onnx.checker.check_model(str(tmp))
    logger.info("export_onnx: wrote %s", path)
    return path
