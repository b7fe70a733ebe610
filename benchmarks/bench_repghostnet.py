"""Latency of RepGhostNet fused by ``reparam.fuse`` against the deploy form.

    python benchmarks/bench_repghostnet.py [--width 1.0] [--iters 200] [--strict]

Measured in one run, in torch eager mode, one thread, batch 1, 224x224, as the
median of interleaved runs (the models alternate every iteration, the order
reversing every other iteration, after a warm-up):

* fused / deploy: ``reparam.fuse(training model)`` against the hand-written
  ``convert_to_deploy`` output.  The deploy form keeps the conv+BN pairs
  outside the cheap paths unfused (as the official release does), so to be
  fair its remaining conv+BN pairs are folded by torch's own
  ``torch.fx.experimental.optimization.fuse``: the baseline has no BN either.
  Target <= 1.03.
* training graph / deploy: the unfused eval-mode training form, for scale.
* the wall time of ``reparam.fuse`` (no verification), median of
  ``--fuse-runs`` runs.  Target <= 1 s.

Prints a markdown table with PASS/FAIL against the targets.  Exits 0 whatever
the numbers (it is a benchmark), unless ``--strict`` is given, then 1 on FAIL.
"""
import argparse
import statistics
import sys
import time

import torch
from torch.fx.experimental.optimization import fuse as torch_fx_conv_bn_fuse

import reparam
from reparam.models import WIDTHS, convert_to_deploy, randomize_bn_, repghostnet

LATENCY_TARGET = 1.03
FUSE_SECONDS_TARGET = 1.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0, choices=WIDTHS, help="width multiplier")
    parser.add_argument("--iters", type=int, default=200, help="interleaved timing iterations")
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    parser.add_argument("--fuse-runs", type=int, default=5, help="timed reparam.fuse calls")
    parser.add_argument("--image-size", type=int, default=224, help="input resolution")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    return parser.parse_args(argv)


@torch.no_grad()
def interleaved_latency_ms(models, x, iters, warmup):
    """Median latency (ms) of each model, alternating the models every iteration."""
    for _ in range(warmup):
        for model in models:
            model(x)
    times = [[] for _ in models]
    for it in range(iters):
        order = range(len(models)) if it % 2 == 0 else reversed(range(len(models)))
        for i in order:
            start = time.perf_counter()
            models[i](x)
            times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def count_bns(model):
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    training = randomize_bn_(repghostnet(width=args.width), torch.Generator().manual_seed(0)).eval()
    fuse_seconds, fused = [], None
    for _ in range(args.fuse_runs):
        start = time.perf_counter()
        fused = reparam.fuse(training)
        fuse_seconds.append(time.perf_counter() - start)
    fuse_s = statistics.median(fuse_seconds)
    deploy = torch_fx_conv_bn_fuse(convert_to_deploy(training).eval())
    assert count_bns(fused) == 0 and count_bns(deploy) == 0, "a BN survived fusion"

    x = torch.randn(1, 3, args.image_size, args.image_size)
    with torch.no_grad():
        reference = training(x)
        for name, model in (("fused", fused), ("deploy", deploy)):
            err = (model(x) - reference).abs().max().item() / reference.abs().max().item()
            assert err < 1e-4, f"{name} differs from the training graph: rel err {err:.2e}"

    fused_ms, deploy_ms, training_ms = interleaved_latency_ms(
        [fused, deploy, training], x, args.iters, args.warmup)
    fused_ratio, training_ratio = fused_ms / deploy_ms, training_ms / deploy_ms

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    size = f"{args.image_size}x{args.image_size}"
    print(f"RepGhostNet {args.width}x, torch {torch.__version__} eager, 1 thread, batch 1, {size}, "
          f"median of {args.iters} interleaved iterations after {args.warmup} warm-up")
    print("deploy = convert_to_deploy(model), remaining conv+BN folded by "
          "torch.fx.experimental.optimization.fuse (no BN left)\n")
    print(f"latency ms: fused {fused_ms:.3f}, deploy {deploy_ms:.3f}, training graph {training_ms:.3f}")
    print(f"reparam.fuse wall time: median {fuse_s:.3f} s of {args.fuse_runs} "
          f"(runs: {', '.join(f'{s:.3f}' for s in fuse_seconds)})\n")
    rows = [
        ("fused / deploy latency", f"{fused_ratio:.3f}", f"<= {LATENCY_TARGET}",
         verdict(fused_ratio <= LATENCY_TARGET)),
        ("training graph / deploy latency", f"{training_ratio:.3f}", "(reference)", "-"),
        ("reparam.fuse wall time (s)", f"{fuse_s:.3f}", f"<= {FUSE_SECONDS_TARGET}",
         verdict(fuse_s <= FUSE_SECONDS_TARGET)),
    ]
    print("| metric | value | target | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    failed = any(row[3] == "FAIL" for row in rows)
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
