"""Shared pytest configuration.

One thread: ``OMP_NUM_THREADS=1`` is set here, before anything imports torch, so that the
test process and the subprocesses it starts (the CLI, the examples, the benchmark smoke
run) inherit it; torch's intra-op pool is set to one thread as well. The models under test
are small: on a shared machine, a thread pool waiting for a descheduled thread made small
convolutions up to a hundred times slower.

Temporary files go under pytest's ``tmp_path`` / ``tmp_path_factory``; with
``tmp_path_retention_policy = failed`` (setup.cfg) a passing run removes them.

Hypothesis profiles: ``ci`` (default, 300 examples per test) and ``thorough``
(10000 examples per test), chosen with the ``HYPOTHESIS_PROFILE`` environment
variable, e.g. ``HYPOTHESIS_PROFILE=thorough python -m pytest tests``.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

try:
    import torch
except ImportError:  # the ONNX path and the kernel algebra are tested without torch
    torch = None
else:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started
        pass

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=False,
                          print_blob=True)
settings.register_profile("thorough", max_examples=10000, deadline=None, derandomize=False,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long sweeps (e.g. RepGhostNet ONNX exports at every width); "
                   'CI runs them, `-m "not slow"` leaves them out while developing')


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(exporter, width, deploy=False, dynamic_hw=False)``: the path of
    RepGhostNet-``width`` exported to ONNX by ``exporter`` ("torchscript",
    "torchscript-nofold", "dynamo", "dynamo-noopt"), exported once per session into a
    directory of ``tmp_path_factory``."""
    from onnx_exports import RepGhostNetExports

    return RepGhostNetExports(tmp_path_factory.mktemp("onnx-exports"))
