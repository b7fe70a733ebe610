"""Exceptions raised by reparam."""


class ReparamError(Exception):
    """Base class of reparam's errors."""


class VerificationError(ReparamError):
    """The fused model's outputs differ from the original's beyond the tolerance."""


class TraceError(ReparamError):
    """The model could not be traced into a graph."""


class BadInputError(ReparamError):
    """The input is not a model reparam can read (missing, unparsable, malformed, unsupported)."""
