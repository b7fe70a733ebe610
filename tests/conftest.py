"""Shared pytest configuration.

Hypothesis profiles: ``ci`` (default, 300 examples per test) and ``thorough``
(10000 examples per test), chosen with the ``HYPOTHESIS_PROFILE`` environment
variable, e.g. ``HYPOTHESIS_PROFILE=thorough python -m pytest tests``.
"""
import os

from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=False,
                          print_blob=True)
settings.register_profile("thorough", max_examples=10000, deadline=None, derandomize=False,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long sweeps (e.g. RepGhostNet ONNX exports at every width); "
                   'CI runs them, `-m "not slow"` leaves them out while developing')
