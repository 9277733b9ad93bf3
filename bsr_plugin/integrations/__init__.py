"""Toolkit integrations, each optional and loaded only when imported (or when a packed file
names its builder): :mod:`bsr_plugin.integrations.basicsr` (registries, ``BinarySRModel``, the
``basicsr`` command), :mod:`bsr_plugin.integrations.mmcv` (MMCV / MMEngine ``MODELS``) and
:mod:`bsr_plugin.integrations.timm` (timm models). They use the core, conversion, analysis and
deploy layers; nothing below them imports a toolkit."""
