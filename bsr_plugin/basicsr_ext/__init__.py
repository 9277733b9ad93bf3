"""The BasicSR integration. Importing this package registers, once, into BasicSR's registries:

* architectures ``BinarizedArch`` (any registered float architecture, binarized), ``EDSRBin``,
  ``MSRResNetBin``;
* losses ``UniformPriorLoss``, ``CurriculumL1Loss``;
* model ``BinarySRModel``;
* dataset ``BicubicPairDataset`` (HR-only folders, LR by bicubic on the fly).

The ``basicsr`` command (``basicsr train|test -opt X.yml``) imports it before running BasicSR's
pipelines.
"""

from __future__ import annotations

from .compat import import_basicsr


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


register()
