"""Fusing cost: time and peak memory of ``reparam.fuse`` and of the CLI against model size.

Each size of the RepVGG-like sweep (:data:`models.COST_SIZES`) runs in a fresh
worker process (``python benchmarks/cost.py --worker WIDTH DEPTH OUT``) that
builds the model, records its resident memory, times ``reparam.fuse`` (no
verification; the median of 3 calls) and reads its own peak resident memory,
then exports the model to ONNX (TorchScript exporter, ``dynamo=False``) at
``OUT`` in a temporary folder. The CLI (``python -m reparam IN OUT``, with its default onnxruntime
check on 3 random inputs) then runs on that file in its own process; its peak
memory is that process's peak resident set size (``VmHWM`` read at its exit:
``ru_maxrss`` would also count the parent it was forked from), its time the
wall time of the whole command (interpreter start included) and its CPU time.

``fuse`` memory is reported as the peak above what the process held before the
call (the model itself and the imports), in multiples of the model's parameter
bytes; the CLI's as the whole process's peak, in multiples of the ONNX file size.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (human_bytes, median_seconds, peak_rss_bytes, reset_peak_rss,  # noqa: E402
                    rss_bytes, run_module_measured, run_script)

HERE = os.path.abspath(__file__)


def worker(width: int, depth: int, onnx_path: str | None) -> dict:
    import gc

    import torch

    import reparam
    from models import repvgg_like

    torch.set_num_threads(1)
    model = repvgg_like(width, depth)
    params = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gc.collect()
    reparam.fuse(repvgg_like(4, 2))  # imports and first-call work are not the model's cost
    # the median of 3 calls: a single call's CPU time varies up to 3x with how the kernel
    # serves fresh memory (numpy asks for transparent huge pages on large arrays; their
    # compaction stalls depend on the machine's state, not on the model)
    runs = 3
    before = rss_bytes()
    reset_peak_rss()
    cpu = []
    for _ in range(runs):
        gc.collect()  # the previous call's GraphModule (fx keeps reference cycles) is freed
        c = time.process_time()
        seconds, _ = median_seconds(lambda: reparam.fuse(model), 1)
        cpu.append((time.process_time() - c, seconds))
    peak = peak_rss_bytes()
    cpu.sort()
    out = {"width": width, "depth": depth, "params": params, "param_bytes": param_bytes,
           "fuse_cpu_s": cpu[len(cpu) // 2][0], "fuse_s": cpu[len(cpu) // 2][1],
           "rss_before": before, "fuse_peak": peak, "fuse_extra": max(peak - before, 0)}
    if onnx_path:
        from latency import export

        export(model, onnx_path, 8)
        out["onnx_bytes"] = os.path.getsize(onnx_path)
    return out


def measure(sizes, with_cli: bool = True, log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for width, depth in sizes:
            src = os.path.join(d, f"repvgg-{width}x{depth}.onnx") if with_cli else None
            r = run_script([sys.executable, HERE, "--worker", str(width), str(depth)]
                           + ([src] if src else []))
            if r["rc"]:
                raise RuntimeError(f"fuse worker {width}x{depth} failed:\n{r['output'][-3000:]}")
            row = json.loads(r["stdout"].strip().splitlines()[-1])
            if src:
                dst = os.path.join(d, "fused.onnx")
                c = run_module_measured("reparam", [src, dst, "-q"])
                if c["rc"]:
                    raise RuntimeError(f"reparam CLI on {width}x{depth} failed:\n{c['output'][-3000:]}")
                row.update(cli_s=c["seconds"], cli_cpu_s=c["cpu_seconds"], cli_peak=c["peak_rss"],
                           fused_bytes=os.path.getsize(dst))
                os.unlink(src)
                os.unlink(dst)
            log(f"  RepVGG-like {width}x{depth}: {row['params'] / 1e6:.2f} M params, fuse "
                f"{row['fuse_s']:.2f} s (+{human_bytes(row['fuse_extra'])})"
                + (f", CLI {row['cli_s']:.1f} s, peak {human_bytes(row['cli_peak'])} for a "
                   f"{human_bytes(row['onnx_bytes'])} file" if src else ""))
            rows.append(row)
    return rows


def repghost_fuse_time(runs: int) -> dict:
    """``reparam.fuse`` on RepGhostNet-1.0x against its hand-written per-class conversion."""
    import torch
    from torch.fx.experimental.optimization import fuse as fx_fuse

    import reparam
    from reparam.models import convert_to_deploy, randomize_bn_, repghostnet

    torch.set_num_threads(1)
    model = randomize_bn_(repghostnet(1.0), torch.Generator().manual_seed(0)).eval()
    reparam.fuse(model)
    convert_to_deploy(model)
    timings = {"reparam.fuse": [], "convert_to_deploy": [], "convert_to_deploy + fx conv-BN fuse": []}
    fns = {"reparam.fuse": lambda: reparam.fuse(model),
           "convert_to_deploy": lambda: convert_to_deploy(model),
           "convert_to_deploy + fx conv-BN fuse": lambda: fx_fuse(convert_to_deploy(model))}
    for i in range(runs):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            s, _ = median_seconds(fns[k], 1)
            timings[k].append(s)
    import statistics

    return {k: statistics.median(v) for k, v in timings.items()}


def slope(xs, ys) -> float:
    """Least-squares exponent ``p`` of ``y ~ x^p``."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        res = worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
        print(json.dumps(res))
    else:
        sys.exit("usage: cost.py --worker WIDTH DEPTH [OUT.onnx]  (run benchmarks/run.py instead)")
