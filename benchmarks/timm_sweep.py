"""timm's Rep-style models through ``reparam.fuse``, against timm's own conversion.

    python benchmarks/timm_sweep.py                 # every model of the families below
    python benchmarks/timm_sweep.py --ci            # one per family (what the tests run)
    python benchmarks/timm_sweep.py --readme        # ... and write the table into README.md

For each model (random weights, BatchNorm statistics measured on its own activations, see
:func:`reparam.models.realistic_bn_`):

* ONNX operator counts (TorchScript exporter, opset 17) of ``reparam.fuse``'s output and of
  timm's deploy form (``timm.utils.model.reparameterize_model``): Conv, BatchNormalization,
  Add, Gemm + MatMul;
* the error of each float32 model against a float64 evaluation of the original, relative to
  its largest output, and whether reparam's is within ``max(1e-6, 2 x the float32 original's
  own error)``;
* the wall time of ``reparam.fuse`` and of ``reparameterize_model`` (median of 3, each on a
  fresh copy for timm, which converts in place);
* that the input model is unchanged and that the report gives a reason for every conv-like or
  BatchNorm-like layer left (``Report.kept``).

Needs timm (``pip install -e ".[test]"``); nothing is downloaded (``pretrained=False``).
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

FAMILIES = ("repghostnet", "repvgg", "mobileone", "fastvit", "repvit", "ghostnetv3")
#: one model per family (and the grouped / SE variants of RepVGG), small enough for CI
CI_MODELS = ("repghostnet_050", "repvgg_a0", "repvgg_b1g4", "mobileone_s0", "fastvit_t8",
             "repvit_m0_9", "ghostnetv3_050")
OPS = ("Conv", "BatchNormalization", "Add", "Gemm")
SIZE = 128  # input side: every family takes it, and it keeps the sweep quick


def all_models() -> list[str]:
    import timm

    return [m for f in FAMILIES for m in timm.list_models(f + "*")]


@dataclass
class Result:
    name: str
    fused_ops: Counter = field(default_factory=Counter)
    deploy_ops: Counter = field(default_factory=Counter)
    error: float = 0.0        # reparam.fuse output (float32) against the float64 original
    deploy_error: float = 0.0  # timm's deploy form, the same way
    own_error: float = 0.0    # the float32 original itself
    fuse_s: float = 0.0
    timm_s: float = 0.0
    unchanged: bool = True
    unexplained: list = field(default_factory=list)  # conv/BN layers left without a reason

    @property
    def error_ok(self) -> bool:
        return self.error <= max(1e-6, 2 * self.own_error)

    @property
    def ops_ok(self) -> bool:
        return all(self.fused_ops[o] <= self.deploy_ops[o] for o in OPS)

    @property
    def ok(self) -> bool:
        return self.error_ok and self.ops_ok and self.unchanged and not self.unexplained


def build(name: str, seed: int = 0) -> torch.nn.Module:
    import timm

    from reparam.models import realistic_bn_

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed)
    return realistic_bn_(model, lambda gen: torch.randn(4, 3, SIZE, SIZE, generator=gen), 2, g)


def onnx_ops(model: torch.nn.Module, x: torch.Tensor, folder: str, tag: str) -> Counter:
    import onnx

    path = os.path.join(folder, tag + ".onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
    ops = Counter(n.op_type for n in onnx.load(path).graph.node)
    ops["Gemm"] += ops.pop("MatMul", 0)
    return ops


def _median_time(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def check(name: str, timing: bool = True) -> Result:
    """Fuse timm model ``name`` and measure it against timm's deploy form (see module doc)."""
    import reparam
    from timm.utils.model import reparameterize_model

    model = build(name)
    res = Result(name)
    before = _state(model)
    fused, report = reparam.fuse(model, report=True)
    after = _state(model)
    res.unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k])
                                                          for k in before)
    deploy = reparameterize_model(copy.deepcopy(model))
    kept = {k.node for k in report.kept}
    res.unexplained = [n.target for n in fused.graph.nodes if n.op == "call_module"
                       and isinstance(fused.get_submodule(n.target),
                                      (torch.nn.modules.conv._ConvNd,
                                       torch.nn.modules.batchnorm._BatchNorm))
                       and _dotted(n.target, kept) is None]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        res.own_error = _rel(model(x), ref)
        res.error = _rel(fused(x), ref)
        res.deploy_error = _rel(deploy(x), ref)
    with tempfile.TemporaryDirectory() as folder:
        res.fused_ops = onnx_ops(fused, x[:1], folder, "fused")
        res.deploy_ops = onnx_ops(deploy, x[:1], folder, "deploy")
    if timing:
        res.fuse_s = _median_time(lambda: reparam.fuse(model))
        copies = [copy.deepcopy(model) for _ in range(3)]
        res.timm_s = _median_time(lambda: reparameterize_model(copies.pop()))
    return res


def _dotted(flat: str, names: set) -> str | None:
    """The report name (dotted module path) of a fused GraphModule's top-level name."""
    for n in names:
        if n.replace(".", "_") == flat:
            return n
    return None


def table(results: list[Result]) -> str:
    head = ("| model | Conv (reparam / timm) | BN | Add | Gemm | error (reparam / timm / float32 "
            "original) | fuse (s) | timm (s) | result |\n| --- | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: | --- |")
    rows = []
    for r in results:
        ops = " | ".join(f"{r.fused_ops[o]} / {r.deploy_ops[o]}" for o in OPS)
        rows.append(f"| {r.name} | {ops} | {r.error:.1e} / {r.deploy_error:.1e} / "
                    f"{r.own_error:.1e} | {r.fuse_s:.2f} | {r.timm_s:.2f} | "
                    f"{'PASS' if r.ok else 'FAIL'} |")
    return "\n".join([head] + rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ci", action="store_true", help="one model per family")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("models", nargs="*", help="timm model names (default: the families)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.models or (list(CI_MODELS) if args.ci else all_models())
    start, results = time.perf_counter(), []
    for name in names:
        r = check(name)
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
    text = (f"{len(results)} models, torch {torch.__version__}, input 2x3x{SIZE}x{SIZE}, one "
            f"thread; `python benchmarks/timm_sweep.py` took {time.perf_counter() - start:.0f} s."
            f"\n\n{table(results)}")
    print("\n" + text)
    if args.readme:
        readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "README.md")
        body = open(readme).read()
        new = re.sub(r"(<!-- timm:begin -->\n).*?(\n<!-- timm:end -->)",
                     lambda m: m.group(1) + text + m.group(2), body, flags=re.S)
        with open(readme, "w") as f:
            f.write(new)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
