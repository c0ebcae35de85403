"""Training, evaluation and generation (the ``train`` extra: torch, Lightning, torchmetrics, matplotlib)."""

from rsgee.optional import require

require("train")
