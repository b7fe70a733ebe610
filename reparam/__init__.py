"""reparam: a structural re-parameterization compiler.

``reparam.fuse(model)`` folds the extra linear branches that Rep-style networks
train with (conv+BN, BN-only and identity branches summed by Add) into single
convolutions, exactly, deciding from the graph alone. Importing reparam does
not import torch.
"""
from .api import fuse
from .errors import ReparamError, TraceError, VerificationError
from .rewrite import Report

__version__ = "0.1.0"
__all__ = ["fuse", "Report", "ReparamError", "TraceError", "VerificationError", "__version__"]
