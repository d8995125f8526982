"""jdd.objectives: pure losses on explicit pytrees."""

from jdd.objectives.bn_matching import bn_statistics_loss, bn_statistics_loss_from_collection

__all__ = ["bn_statistics_loss", "bn_statistics_loss_from_collection"]
