"""reparam.fuse on a zoo of Rep-style families, against each family's own deploy conversion.

Every family in ``tests/zoo`` is written from its paper with the authors'
deploy conversion computed independently of reparam (the oracle). For each
model of each family (a small network and a few single blocks), with
randomized BatchNorm statistics and affine parameters, in eval mode:

* the oracle is right: its inference form computes what the training form
  computes (float32: 1e-5 relative, float64: 1e-10) and has the number of
  convolutions the paper's block structure gives;
* ``reparam.fuse`` reaches the inference form: as many convolutions called in
  its fx graph as the oracle's, no BatchNorm, and the training form's outputs
  within 1e-5 relative in float32 and 1e-10 in float64;
* ``reparam.fuse`` does not look at class names: renaming every module class
  gives the same fused result.

"Relative" is ``max|fused - reference| <= tol * max|reference|``.
"""
from __future__ import annotations

import copy
import functools
import importlib
import zlib

import pytest

torch = pytest.importorskip("torch")  # the whole module needs torch
from torch import fx, nn

import reparam
from reparam.models import randomize_bn_

try:
    from tests import zoo
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    import zoo

FAMILIES = {name: importlib.import_module(f"{zoo.__name__}.{name}") for name in zoo.FAMILIES}

F32, F64, SAME = 1e-5, 1e-10, 1e-12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one thread is faster, and on a shared machine an OpenMP
    team waiting for a descheduled thread can make a forward pass 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _cases(family):
    """``{case: (float32 eval model with randomized BNs, float32 input)}``, built once."""
    out = {}
    for name, (model, shape) in FAMILIES[family].cases().items():
        gen = torch.Generator().manual_seed(zlib.crc32(f"{family}/{name}".encode()))
        randomize_bn_(model, gen).eval()
        out[name] = (model, torch.randn(shape, generator=gen))
    return out


CASES = [(family, case) for family in FAMILIES for case in _cases(family)]
parametrize = pytest.mark.parametrize("family,case", CASES,
                                      ids=[f"{f}-{c}" for f, c in CASES])


def get(family, case, dtype=torch.float32):
    """A fresh copy of the case's model (eval, ``dtype``) and its input."""
    model, x = _cases(family)[case]
    model = copy.deepcopy(model).to(dtype).eval()
    return model, x.to(dtype)


@functools.lru_cache(maxsize=None)
def fused(family, case, dtype=torch.float32):
    """``reparam.fuse`` of the case's model in ``dtype``: ``(module, report)``, fused once."""
    model, _ = get(family, case, dtype)
    return reparam.fuse(model, report=True)


@functools.lru_cache(maxsize=None)
def deployed(family, case, dtype=torch.float32):
    model, _ = get(family, case, dtype)
    return FAMILIES[family].deploy_convert(model)


def rel_err(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def run(model, x):
    with torch.no_grad():
        return model(x)


def signature(convs):
    return [(tuple(c.kernel_size), tuple(c.stride), c.groups, c.in_channels, c.out_channels)
            for c in convs]


def batchnorms(model):
    """BatchNorm modules held by ``model`` and batch_norm calls in its fx graph."""
    found = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if isinstance(model, fx.GraphModule):
        found += [n.name for n in model.graph.nodes
                  if n.op == "call_function" and "batch_norm" in str(n.target)]
    return found


def explain(report, fused_convs=None, deploy_convs=None):
    text = f"\n--- reparam report ---\n{report}"
    if fused_convs is not None:
        text += (f"\nfused convs  ({len(fused_convs)}): {signature(fused_convs)}"
                 f"\ndeploy convs ({len(deploy_convs)}): {signature(deploy_convs)}")
    return text


# --- (a) the oracle ---------------------------------------------------------------------

@parametrize
def test_deploy_form_matches_original(family, case):
    fam = FAMILIES[family]
    model, x = get(family, case)
    deploy = deployed(family, case)
    n = len(zoo.called_convs(deploy))
    assert n == fam.deploy_conv_count(model) == fam.deploy_conv_count(deploy)
    err = rel_err(run(deploy, x), run(model, x))
    assert err <= F32, err
    model64, x64 = get(family, case, torch.float64)
    deploy64 = deployed(family, case, torch.float64)
    assert all(p.dtype == torch.float64 for p in deploy64.parameters())
    err64 = rel_err(run(deploy64, x64), run(model64, x64))
    assert err64 <= F64, err64


# --- (b) reparam.fuse reaches the deploy form ---------------------------------------------

@parametrize
def test_fuse_has_deploy_structure(family, case):
    out, report = fused(family, case)
    fused_convs = zoo.called_convs(out)
    deploy_convs = zoo.called_convs(deployed(family, case))
    why = explain(report, fused_convs, deploy_convs)
    assert len(fused_convs) == len(deploy_convs), why
    assert batchnorms(out) == [], why


@parametrize
def test_fuse_matches_original_float32(family, case):
    model, x = get(family, case)
    out, report = fused(family, case)
    err = rel_err(run(out, x), run(model, x))
    assert err <= F32, f"{err}{explain(report)}"


@parametrize
def test_fuse_matches_original_float64(family, case):
    model, x = get(family, case, torch.float64)
    out, report = fused(family, case, torch.float64)
    assert all(p.dtype == torch.float64 for p in out.parameters())
    err = rel_err(run(out, x), run(model, x))
    assert err <= F64, f"{err}{explain(report)}"


# --- (c) class names do not matter ------------------------------------------------------------

def renamed(model):
    """A copy of ``model`` whose every module is an instance of a new subclass ``X<i>``.

    The subclass keeps its base's ``__module__``: torch.fx decides which modules
    are leaves (``nn.Conv2d``, ``nn.BatchNorm2d``, ...) by the module their class
    is defined in, so a renamed ``torch.nn`` class stays a leaf and the traced
    graph is the same; only the names differ.
    """
    model = copy.deepcopy(model)
    new = {}
    for m in model.modules():
        cls = type(m)
        if cls not in new:
            name = f"X{len(new)}"
            new[cls] = type(name, (cls,), {"__module__": cls.__module__, "__qualname__": name})
        m.__class__ = new[cls]
    return model


@parametrize
def test_class_names_do_not_matter(family, case):
    model, x = get(family, case, torch.float64)
    other = renamed(model)
    assert all(type(m).__name__.startswith("X") for m in other.modules())
    ref, ref_report = fused(family, case, torch.float64)
    out, report = reparam.fuse(other, report=True)
    ref_convs, out_convs = zoo.called_convs(ref), zoo.called_convs(out)
    why = explain(report, out_convs, ref_convs) + explain(ref_report)
    assert signature(out_convs) == signature(ref_convs), why
    assert report.fired == ref_report.fired, why
    assert len(batchnorms(out)) == len(batchnorms(ref)), why
    y_ref = run(ref, x)
    assert rel_err(run(out, x), y_ref) <= SAME, why
