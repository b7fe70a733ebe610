"""Reference networks for the re-parameterization compiler."""
from .calibrate import realistic_bn_
from .repghost import (
    REPARAM_VARIANTS,
    WIDTHS,
    ConvBnAct,
    RepGhostBottleneck,
    RepGhostModule,
    RepGhostNet,
    SqueezeExcite,
    convert_to_deploy,
    randomize_bn_,
    repghostnet,
)

__all__ = [
    "REPARAM_VARIANTS",
    "WIDTHS",
    "ConvBnAct",
    "RepGhostBottleneck",
    "RepGhostModule",
    "RepGhostNet",
    "SqueezeExcite",
    "convert_to_deploy",
    "randomize_bn_",
    "realistic_bn_",
    "repghostnet",
]
