"""Latency under onnxruntime of RepGhostNet fused from its ONNX training export.

    python benchmarks/bench_onnx_repghostnet.py [--width 1.0] [--exporter torchscript]
                                                [--iters 200] [--strict]

Exports, with the chosen torch exporter (``torchscript``: ``dynamo=False``,
``torchscript-nofold``: the same without constant folding, ``dynamo``: the
torch.export-based one), the training form of RepGhostNet (random BN
statistics) and its deploy form (``convert_to_deploy``; the exporter folds its
remaining conv+BN pairs, so the baseline has no BatchNormalization either),
fuses the training export with ``reparam`` (the same code path as the CLI),
checks the outputs agree, then measures in one run with onnxruntime on one
thread (intra- and inter-op), batch 1, 224x224, the median of interleaved runs
(the three sessions take turns every iteration, after a warm-up):

* fused / deploy: target <= 1.03;
* training export / deploy, for comparison;
* the wall time of the ONNX fuse itself (load excluded).

Prints a markdown table with PASS/FAIL. Exits 0 whatever the numbers unless
``--strict`` is given, then 1 on FAIL.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

import reparam
from reparam.models import WIDTHS, convert_to_deploy, randomize_bn_, repghostnet

LATENCY_TARGET = 1.03


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0, choices=WIDTHS)
    p.add_argument("--exporter", default="torchscript", choices=["torchscript", "torchscript-nofold", "dynamo"])
    p.add_argument("--iters", type=int, default=200, help="interleaved timing iterations")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def export(model, path, exporter):
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["x"], output_names=["y"],
                              verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                              do_constant_folding=exporter == "torchscript")
    return onnx.load(path)


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ops(model, op):
    return sum(n.op_type == op for n in model.graph.node)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    train = randomize_bn_(repghostnet(args.width), torch.Generator().manual_seed(0)).eval()
    deploy = convert_to_deploy(train).eval()
    with tempfile.TemporaryDirectory() as d:
        train_onnx = export(train, os.path.join(d, "train.onnx"), args.exporter)
        deploy_onnx = export(deploy, os.path.join(d, "deploy.onnx"), args.exporter)
    start = time.perf_counter()
    fused, report = reparam.fuse(train_onnx, report=True)
    fuse_s = time.perf_counter() - start

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    models = {"fused": fused, "deploy": deploy_onnx, "training": train_onnx}
    sessions = {k: session(m) for k, m in models.items()}
    outs = {k: s.run(None, {"x": x})[0] for k, s in sessions.items()}
    err = float(np.abs(outs["fused"] - outs["training"]).max() / np.abs(outs["training"]).max())
    times = {k: [] for k in sessions}
    order = list(sessions)
    for i in range(args.warmup + args.iters):
        for k in (order if i % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            sessions[k].run(None, {"x": x})
            if i >= args.warmup:
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    ratio = med["fused"] / med["deploy"]
    ok = ratio <= LATENCY_TARGET
    print(f"RepGhostNet-{args.width}x, {args.exporter} export, onnxruntime {ort.__version__}, 1 thread, "
          f"batch 1, 224x224, median of {args.iters} interleaved runs")
    print(f"ops (Conv/BatchNormalization/Add): training {ops(train_onnx, 'Conv')}/"
          f"{ops(train_onnx, 'BatchNormalization')}/{ops(train_onnx, 'Add')}, fused {ops(fused, 'Conv')}/"
          f"{ops(fused, 'BatchNormalization')}/{ops(fused, 'Add')}, deploy {ops(deploy_onnx, 'Conv')}/"
          f"{ops(deploy_onnx, 'BatchNormalization')}/{ops(deploy_onnx, 'Add')}; "
          f"fused vs training max|diff|/max|ref| = {err:.2g}")
    print()
    print("| measure | value | target | result |")
    print("|---|---|---|---|")
    print(f"| deploy latency | {med['deploy']:.3f} ms | | |")
    print(f"| fused latency | {med['fused']:.3f} ms | | |")
    print(f"| training-export latency | {med['training']:.3f} ms | | |")
    print(f"| fused / deploy | {ratio:.3f} | <= {LATENCY_TARGET} | {'PASS' if ok else 'FAIL'} |")
    print(f"| training-export / deploy | {med['training'] / med['deploy']:.3f} | (for comparison) | |")
    print(f"| reparam fuse time | {fuse_s:.3f} s | | |")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
