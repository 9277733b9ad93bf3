"""The BasicSR integration. Importing this package registers, once, into BasicSR's registries:

* architectures ``BinarizedArch`` (any registered float architecture, binarized), ``EDSRBin``,
  ``MSRResNetBin``;
* losses ``UniformPriorLoss``, ``CurriculumL1Loss``;
* model ``BinarySRModel``;
* dataset ``BicubicPairDataset`` (HR-only folders, LR by bicubic on the fly);

and the network builder ``basicsr`` (:mod:`bsr_plugin.deploy.builders`), through which packed
files and the ``bsr`` command build BasicSR networks (``-opt`` options files included).

The ``basicsr`` command (``basicsr train|test -opt X.yml``) imports it before running BasicSR's
pipelines.
"""

from __future__ import annotations

from .shims import import_basicsr


def register() -> None:
    """Register the plugin's types into BasicSR's registries (idempotent)."""
    import_basicsr()
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

    from .archs import BINARIZED_ARCHS
    from .datasets import BicubicPairDataset
    from .losses import LOSSES
    from .models import MODELS

    for registry, objs in ((ARCH_REGISTRY, BINARIZED_ARCHS.values()), (LOSS_REGISTRY, LOSSES),
                           (MODEL_REGISTRY, MODELS), (DATASET_REGISTRY, (BicubicPairDataset,))):
        for obj in objs:
            if obj.__name__ not in registry:
                registry.register(obj)


def register_builder() -> None:
    """Register the ``basicsr`` network builder (the entry point ``bsr_plugin.builders``)."""
    from ...deploy.builders import register_builder as register
    from .network import build_from_spec, check_packed_spec, network_from_options

    register("basicsr", build_from_spec, from_options=network_from_options, check_spec=check_packed_spec,
             description="a BasicSR network_g spec (any registered architecture)")


register()
