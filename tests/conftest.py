"""Shared pytest configuration.

Hypothesis profiles: ``ci`` (default, 100 examples per test) and ``thorough``
(10000 examples per test), chosen with the ``HYPOTHESIS_PROFILE`` environment
variable, e.g. ``HYPOTHESIS_PROFILE=thorough python -m pytest tests``.
"""
import os

from hypothesis import settings

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=False,
                          print_blob=True)
settings.register_profile("thorough", max_examples=10000, deadline=None, derandomize=False,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
