"""timm's Rep-style models through the ``reparam`` CLI, against their deploy exports.

    python benchmarks/timm_onnx_sweep.py                       # every model of timm_sweep's families
    python benchmarks/timm_onnx_sweep.py --exporters torchscript,dynamo fastvit_t8 repvit_m1
    python benchmarks/timm_onnx_sweep.py --out results.md      # also write the table there

For each model (random weights, BatchNorm statistics measured on its own activations, as in
``benchmarks/timm_sweep.py``) and exporter (``torchscript``: ``dynamo=False``, opset 17;
``dynamo``: torch.export), the training form and timm's deploy form
(``reparameterize_model``) are exported at 1x3x128x128, and ``python -m reparam`` (default
check) turns the training export into OUT. Measured: Conv, BatchNormalization, Add and
Gemm + MatMul counts, weight values (elements of all initializers) and file size (with
external data) of the training export, OUT and the deploy export; the CLI's wall time and
exit code, and whether it printed a numpy or onnx warning. A row passes when the CLI exits
0 without a warning, OUT's op counts are at most the deploy export's, and OUT's weight count
and size are at most the training export's and at most the deploy export's + 1%.

Needs timm and torch (``pip install -e ".[test]"``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch

from timm_sweep import all_models, build

OPS = ("Conv", "BatchNormalization", "Add", "Gemm")
SIZE = 128


@dataclass
class Form:
    ops: Counter = field(default_factory=Counter)
    weights: int = 0
    size: int = 0


@dataclass
class Row:
    model: str
    exporter: str
    train: Form
    out: Form
    deploy: Form
    code: int
    seconds: float
    warned: bool

    @property
    def ok(self) -> bool:
        o, d, t = self.out, self.deploy, self.train
        return (self.code == 0 and not self.warned and all(o.ops[k] <= d.ops[k] for k in OPS)
                and o.weights <= min(t.weights, 1.01 * d.weights)
                and o.size <= min(t.size, 1.01 * d.size))


def measure(path: str) -> Form:
    import onnx

    m = onnx.load(path, load_external_data=False)
    ops = Counter(n.op_type for n in m.graph.node)
    ops["Gemm"] += ops.pop("MatMul", 0)
    folder = os.path.dirname(os.path.abspath(path))
    files = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    size = os.path.getsize(path) + sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return Form(ops, sum(math.prod(t.dims) for t in m.graph.initializer), size)


def export(model, path: str, exporter: str) -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=exporter == "dynamo", opset_version=18
                          if exporter == "dynamo" else 17, input_names=["x"], output_names=["y"],
                          **({"verbose": False} if exporter == "dynamo" else {}))


def run(name: str, exporters, folder: str) -> list[Row]:
    from timm.utils.model import reparameterize_model

    model = build(name)
    deploy = reparameterize_model(copy.deepcopy(model))
    rows = []
    for exporter in exporters:
        sub = os.path.join(folder, exporter)
        os.makedirs(sub, exist_ok=True)
        train_p, deploy_p, out_p = (os.path.join(sub, f"{name}-{k}.onnx")
                                    for k in ("train", "deploy", "out"))
        export(model, train_p, exporter)
        export(deploy, deploy_p, exporter)
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "reparam", train_p, out_p, "-q"],
                           capture_output=True, text=True)
        seconds = time.perf_counter() - start
        warned = "Warning" in r.stderr or "warning" in r.stderr.lower()
        out = measure(out_p) if r.returncode == 0 else Form()
        rows.append(Row(name, exporter, measure(train_p), out, measure(deploy_p), r.returncode,
                        seconds, warned))
        if r.returncode or warned:
            print(f"  {name} {exporter}: exit {r.returncode}: {r.stderr.strip()[:400]}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    head = ("| model | exporter | Conv (out / deploy) | BN | Add | Gemm | weights (train / out / "
            "deploy) | size MB (train / out / deploy) | CLI (s) | result |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    lines = [head]
    for r in rows:
        ops = " | ".join(f"{r.out.ops[o]} / {r.deploy.ops[o]}" for o in OPS)
        w = f"{r.train.weights / 1e6:.3f}M / {r.out.weights / 1e6:.3f}M / {r.deploy.weights / 1e6:.3f}M"
        s = f"{r.train.size / 1e6:.2f} / {r.out.size / 1e6:.2f} / {r.deploy.size / 1e6:.2f}"
        verdict = "PASS" if r.ok else f"FAIL (exit {r.code}{', warning' if r.warned else ''})"
        lines.append(f"| {r.model} | {r.exporter} | {ops} | {w} | {s} | {r.seconds:.1f} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exporters", default="torchscript",
                   help="comma-separated: torchscript, dynamo (default torchscript)")
    p.add_argument("--out", help="also write the table (markdown) to this file")
    p.add_argument("models", nargs="*", help="timm model names (default: every family's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    exporters = args.exporters.split(",")
    names = args.models or all_models()
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            rows += run(name, exporters, folder)
            print("\n".join(table(rows[-len(exporters):]).splitlines()[2:]), flush=True)
    text = (f"{len(rows)} exports of {len(names)} models, torch {torch.__version__}, input "
            f"1x3x{SIZE}x{SIZE}; took {time.perf_counter() - start:.0f} s.\n\n{table(rows)}")
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
