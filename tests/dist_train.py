"""Run under torchrun by tests/integrations/test_distributed.py: ``basicsr train`` with a model that, at each
save, also writes every rank's weights, so the test can check that the ranks agree."""

from __future__ import annotations

import os
import sys

import torch

from bsr_plugin.integrations.basicsr import register
from bsr_plugin.integrations.basicsr.cli import main
from bsr_plugin.integrations.basicsr.models import BinarySRModel


class RankDumpSRModel(BinarySRModel):
    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        rank = self.opt["rank"]
        state = self.get_bare_model(self.net_g).state_dict()
        torch.save(state, os.path.join(self.opt["path"]["experiments_root"], f"rank{rank}_{current_iter}.pth"))


if __name__ == "__main__":
    register()
    from basicsr.utils.registry import MODEL_REGISTRY

    if "RankDumpSRModel" not in MODEL_REGISTRY:
        MODEL_REGISTRY.register(RankDumpSRModel)
    sys.exit(main(sys.argv[1:]))
