"""Analysis of binarized networks, used by training, deploy and the command line alike:
:func:`~bsr_plugin.analysis.complexity.summary` (params, MACs, OPs, storage of FP and binary
layers) and :func:`~bsr_plugin.analysis.check.check_binary` (one forward pass proving that
every binarized layer computes on +-1 operands). Uses the core only."""
