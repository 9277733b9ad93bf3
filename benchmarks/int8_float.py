"""The float network quantized to int8 (or run in bf16) by standard tools, for the comparison of
benchmarks/engine_network.py: what a user would do instead of binarizing.

Each builder takes the float network and a few calibration images (``[1, 3, H, W]`` fp32) and
returns a callable ``net(x) -> y`` on fp32 NCHW tensors (any size):

* ``torch_onednn``: the float network's convs through :func:`bsr_plugin.deploy.engine.lowp.lower_fp_parts`
  (oneDNN's int8 conv, the kernel PyTorch's x86 int8 path lowers to), eager, per layer, plus the
  in-place residual adds of :mod:`bsr_plugin.deploy.engine.blocks`; ``torch_onednn_bf16`` the same in bf16.
* ``pt2e_inductor``: PT2E static quantization with torchao's ``X86InductorQuantizer`` (per-channel
  weights, uint8 activations), compiled by ``torch.compile`` (inductor, freezing): PyTorch's own
  x86 int8 path, quantize/dequantize, ReLU and adds fused into oneDNN's int8 convs.
* ``ort_qdq``: onnxruntime static quantization (QDQ, per-channel int8 weights, uint8
  activations, MinMax calibration) of the float ONNX export, run by onnxruntime's CPU provider.
* ``openvino_nncf``: NNCF post-training quantization of the float ONNX model read by OpenVINO,
  compiled for the CPU (``LATENCY`` hint; on a CPU with AMX/AVX512_BF16 OpenVINO runs the
  layers it does not quantize in bf16, its default there).

Optional packages (``onnxruntime``, ``openvino``, ``nncf``, ``torchao``) are imported by the
builder that needs them; :func:`available_tools` lists the ones that can run here.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger("int8_float")
Net = Callable[[Tensor], Tensor]
INPUT, OUTPUT = "input", "output"
TOOLS = ("torch_onednn", "pt2e_inductor", "ort_qdq", "openvino_nncf")
NEEDS = {"torch_onednn": (), "pt2e_inductor": ("torchao",), "ort_qdq": ("onnxruntime",),
         "openvino_nncf": ("openvino", "nncf")}


def available_tools() -> list[str]:
    """The int8 tools whose packages are installed here."""
    return [t for t in TOOLS if all(importlib.util.find_spec(p) is not None for p in NEEDS[t])]


class _PerThreads:
    """A runtime session per thread count (``torch.get_num_threads()`` at call time), made on
    first use by ``make(threads)``, called as ``session(x_numpy) -> y_numpy``."""

    def __init__(self, make: Callable[[int], Callable[[np.ndarray], np.ndarray]]) -> None:
        self.make = make
        self.sessions: dict[int, Callable[[np.ndarray], np.ndarray]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        threads = torch.get_num_threads()
        if threads not in self.sessions:
            self.sessions[threads] = self.make(threads)
        return torch.from_numpy(self.sessions[threads](x.contiguous().numpy()))


def export_float_onnx(net: nn.Module, path: Path) -> Path:
    """The float network as ONNX (opset 17, dynamic batch, height and width)."""
    sample = torch.rand(1, 3, 32, 32)
    axes = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(net.eval(), (sample,), str(path), dynamo=False, opset_version=17, input_names=[INPUT],
                      output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: axes})
    return path


def torch_onednn(net: nn.Module, images: list[Tensor], precision: str = "int8") -> Net:
    """The float network with every conv of 16+ input channels in int8 (or bf16) by
    :func:`lower_fp_parts`, residual adds in place, channels_last."""
    from bsr_plugin.deploy.engine.blocks import fuse_residual_blocks
    from bsr_plugin.deploy.engine.lowp import calibrate_fp_parts, lower_fp_parts

    net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
    fuse_residual_blocks(net)
    calibration = calibrate_fp_parts(net, images) if precision == "int8" else None
    lowered = lower_fp_parts(net, precision, calibration)
    return lambda x: lowered(x.contiguous(memory_format=torch.channels_last))


def pt2e_inductor(net: nn.Module, images: list[Tensor], example: Tensor) -> Net:
    """PT2E + X86InductorQuantizer + torch.compile (freezing); compiled for ``example``'s shape
    (another shape recompiles)."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        exported = torch.export.export(copy.deepcopy(net).eval(), (example,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        for image in images:
            prepared(image)
        converted = convert_pt2e(prepared)
    inductor_config.freezing = True
    compiled = torch.compile(converted)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(x)

    return run


def _reader(images: list[Tensor]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{INPUT: image.contiguous().numpy()} for image in images])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self.items, None)

    return Reader()


def ort_qdq(net: nn.Module, images: list[Tensor], folder: Path) -> Net:
    """onnxruntime static QDQ quantization (module docstring), one session per thread count."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_path = export_float_onnx(net, folder / "float.onnx")
    int8_path = folder / "int8_qdq.onnx"
    quantize_static(str(float_path), str(int8_path), _reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)

    def make(threads: int) -> Callable[[np.ndarray], np.ndarray]:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT: x})[0]

    return _PerThreads(make)


def _openvino_session(model, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer({0: x})[0], copy=True)


def openvino_nncf(net: nn.Module, images: list[Tensor], folder: Path) -> Net:
    """NNCF post-training int8 quantization of the float model in OpenVINO (module docstring)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(export_float_onnx(net, folder / "float_ov.onnx")))
    dataset = nncf.Dataset([image.contiguous().numpy() for image in images])
    quantized = nncf.quantize(model, dataset, subset_size=len(images))
    return _PerThreads(lambda threads: _openvino_session(quantized, threads))


def openvino_float(net: nn.Module, folder: Path) -> Net:
    """The float model in OpenVINO without quantization (bf16 inference where the CPU has it)."""
    import openvino as ov

    model = ov.Core().read_model(str(export_float_onnx(net, folder / "float_ov.onnx")))
    return _PerThreads(lambda threads: _openvino_session(model, threads))


def build(tool: str, net: nn.Module, images: list[Tensor], folder: Path, example: Tensor) -> Net:
    """The float network ``net`` run by ``tool`` (one of :data:`TOOLS`)."""
    if tool == "torch_onednn":
        return torch_onednn(net, images)
    if tool == "pt2e_inductor":
        return pt2e_inductor(net, images, example)
    if tool == "ort_qdq":
        return ort_qdq(net, images, folder)
    if tool == "openvino_nncf":
        return openvino_nncf(net, images, folder)
    raise ValueError(f"unknown int8 tool {tool!r}; one of {', '.join(TOOLS)}")
