"""The rewrite rules, installed as ``reparam.passes``.

``DEFAULT_RULES`` is the order the driver tries them on each node.
"""
from .bn_branch import bn_branch_to_conv
from .compose import compose_convs
from .cleanup import drop_identity, drop_noop_affine, remove_dead
from .conv_bn import fold_conv_bn, fold_sum_coefficient
from .norm_affine import fold_affine_into_norm
from .pad_conv import absorb_zero_pad
from .parallel_add import merge_parallel_branches

DEFAULT_RULES = [drop_identity, drop_noop_affine, fold_conv_bn, fold_affine_into_norm,
                 bn_branch_to_conv, merge_parallel_branches, fold_sum_coefficient, absorb_zero_pad,
                 compose_convs, remove_dead]

__all__ = ["DEFAULT_RULES", "absorb_zero_pad", "bn_branch_to_conv", "compose_convs",
           "drop_identity", "drop_noop_affine", "fold_affine_into_norm", "fold_conv_bn",
           "fold_sum_coefficient", "merge_parallel_branches", "remove_dead"]
