"""RoTTA (Yuan et al. CVPR 2023): the method (:mod:`.method`) and its two parts, the category-balanced
memory bank (:mod:`.memory`) and the strong augmentation of the memory batch (:mod:`.augment`)."""

from tta.methods.rotta.method import RoTTA, soft_cross_entropy, timeliness_weights

__all__ = ["RoTTA", "soft_cross_entropy", "timeliness_weights"]
