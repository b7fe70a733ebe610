"""Fold RepGhostNet with ``reparam.fuse`` and compare it with the original.

    python examples/repghostnet.py                      # random weights, 1.0x
    python examples/repghostnet.py ckpt.pth --width 1.0 # a training-form checkpoint

Without a checkpoint the training-form network gets realistic BatchNorm
parameters: the BN affine parameters (weight, bias) are randomized first, then
the running statistics are estimated as a cumulative average (momentum=None)
over a few train-mode forward passes on random images (batch 8 at
``--calib-size``, default 160x160 to keep the demo fast), so every BN is a
non-trivial affine map and activations stay at a realistic scale.  A
checkpoint (raw state_dict, or a dict holding one under 'state_dict_ema',
'state_dict' or 'model') is loaded with strict=True and used as is.

The model is then fused: timed alone (first call, with its one-time warm-up,
and warm), then once more with verification against the original on a random
batch (both models run on it), and
a table compares the original, the fused model and the hand-written deploy
conversion ``convert_to_deploy`` (which, like the official release, leaves the
conv+BN pairs outside the cheap paths unfused): op counts, parameters,
latency (batch 1, median of interleaved runs) and the error of each against
the original, in float32 and in float64 (the float64 model fused in float64,
which shows the folding itself is exact).  Exits with status 1 if
verification fails.
"""
import argparse
import copy
import operator
import statistics
import sys
import time

import torch
import torch.nn as nn

import reparam
from reparam.models import WIDTHS, convert_to_deploy, realistic_bn_, repghostnet

CHECKPOINT_KEYS = ("state_dict_ema", "state_dict", "model")
FUSE_WARM_CALLS = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="training-form state_dict to load (default: random weights)")
    parser.add_argument("--width", type=float, default=1.0, choices=WIDTHS, help="width multiplier")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the latency runs")
    parser.add_argument("--runs", type=int, default=30, help="interleaved latency rounds")
    parser.add_argument("--image-size", type=int, default=224, help="input resolution")
    parser.add_argument("--calib-steps", type=int, default=5, help="train-mode passes estimating BN statistics")
    parser.add_argument("--calib-size", type=int, default=160, help="resolution of the BN-statistics passes")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_checkpoint(model, path):
    """Load a state_dict (possibly wrapped in a dict, possibly DDP-prefixed) with strict=True."""
    state = torch.load(path, map_location="cpu")
    for key in CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)


@torch.no_grad()
def op_counts(model):
    """Conv, BN and Add nodes of ``model``'s torch.fx graph, and its parameter count."""
    graph_module = model if isinstance(model, torch.fx.GraphModule) else torch.fx.symbolic_trace(model)
    counts = {"convs": 0, "BNs": 0, "Adds": 0}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            module = graph_module.get_submodule(node.target)
            if isinstance(module, nn.Conv2d):
                counts["convs"] += 1
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                counts["BNs"] += 1
        elif node.op == "call_function":
            if node.target in (torch.conv2d, nn.functional.conv2d):
                counts["convs"] += 1
            elif node.target in (torch.batch_norm, nn.functional.batch_norm):
                counts["BNs"] += 1
            elif node.target in (operator.add, operator.iadd, torch.add):
                counts["Adds"] += 1
        elif node.op == "call_method" and node.target in ("add", "add_"):
            counts["Adds"] += 1
    counts["params"] = sum(p.numel() for p in graph_module.parameters())
    return counts


@torch.no_grad()
def interleaved_latency_ms(models, x, rounds, warmup=3):
    """Median latency (ms) of each model, the models alternating every round
    (and the order reversing every other round) so drift hits all alike."""
    for _ in range(warmup):
        for model in models:
            model(x)
    times = [[] for _ in models]
    for r in range(rounds):
        order = list(range(len(models)))
        if r % 2:
            order.reverse()
        for i in order:
            start = time.perf_counter()
            models[i](x)
            times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


@torch.no_grad()
def errors(model, reference_output, x):
    """(max abs error, max abs error / max |reference|) of ``model(x)``."""
    diff = (model(x) - reference_output).abs().max().item()
    return diff, diff / reference_output.abs().max().item()


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    size = args.image_size

    model = repghostnet(width=args.width)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
        source = f"weights from {args.checkpoint}"
    else:
        start = time.perf_counter()
        realistic_bn_(model, lambda g: torch.randn(8, 3, args.calib_size, args.calib_size,
                                                   generator=g), args.calib_steps, generator)
        source = (f"random weights, BN affine randomized, BN stats from {args.calib_steps} train-mode "
                  f"passes (batch 8, {args.calib_size}x{args.calib_size}) in {time.perf_counter() - start:.1f} s")
    model.eval()
    print(f"RepGhostNet {args.width}x: {source}")

    x = torch.randn(2, 3, size, size, generator=generator)
    fuse_times = []
    for _ in range(1 + FUSE_WARM_CALLS):
        start = time.perf_counter()
        reparam.fuse(model)
        fuse_times.append(time.perf_counter() - start)
    try:
        start = time.perf_counter()
        fused, report = reparam.fuse(model, example_inputs=x, report=True)
        seconds = time.perf_counter() - start
    except reparam.VerificationError as error:
        print(f"verification FAILED: {error}", file=sys.stderr)
        return 1
    print(f"reparam.fuse(model), fusing alone: {fuse_times[0]:.3f} s on the first call (includes "
          f"one-time warm-up), {statistics.median(fuse_times[1:]):.3f} s warm (median of the next "
          f"{FUSE_WARM_CALLS} calls, as in the README's benchmark)")
    print(f"reparam.fuse(model, example_inputs=x), fusing + verification: {seconds:.3f} s (also runs "
          f"the original and the fused model on x of shape {tuple(x.shape)} and compares the outputs)\n")
    deploy = convert_to_deploy(model).eval()
    model64 = copy.deepcopy(model).double()
    fused64, deploy64 = reparam.fuse(model64), convert_to_deploy(model64).eval()

    columns = {"original": model, "fused": fused, "deploy": deploy}
    counts = {name: op_counts(m) for name, m in columns.items()}
    with torch.no_grad():
        ref32 = model(x)
        x64 = x[:1].double()
        ref64 = model64(x64)
    err32 = {name: errors(m, ref32, x) for name, m in columns.items()}
    err64 = {"original": (0.0, 0.0), "fused": errors(fused64, ref64, x64), "deploy": errors(deploy64, ref64, x64)}

    torch.set_num_threads(args.threads)
    one = torch.randn(1, 3, size, size, generator=generator)
    latency = dict(zip(columns, interleaved_latency_ms(list(columns.values()), one, args.runs)))

    rows = [[key] + [counts[name][key] for name in columns] for key in ("convs", "BNs", "Adds")]
    rows.append(["params"] + [f"{counts[name]['params']:,}" for name in columns])
    rows.append([f"latency ms (batch 1, {size}x{size}, {args.threads} thr, median of {args.runs})"]
                + [f"{latency[name]:.2f}" for name in columns])
    rows.append(["speed-up vs original"] + [f"{latency['original'] / latency[name]:.2f}x" for name in columns])
    for label, err in (("float32", err32), ("float64", err64)):
        rows.append([f"max abs err ({label})"] + [f"{err[name][0]:.2e}" for name in columns])
        rows.append([f"max rel err ({label})"] + [f"{err[name][1]:.2e}" for name in columns])
    print(markdown_table(["", "original", "fused (reparam)", "deploy (convert_to_deploy)"], rows))
    print(f"\nrelative error = max|out - ref| / max|ref| over a random batch {tuple(x.shape)};"
          " float64: the model cast to float64, then fused/converted, on its first image")
    print(f"\n{report}")
    if report.refused:
        costly = sum("cost more" in r.reason for r in report.refused)
        why = "folding them would cost more than the layers they replace"
        if costly < len(report.refused):
            why = (f"folding {costly} of them would cost more than the layers they replace, the "
                   "others for the reason given with each")
        print(f"\n{len(report.refused)} candidates were refused: left as they are, not a failure, "
              f"because {why}; the fused model was verified above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
