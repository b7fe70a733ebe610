"""The CLI on a large ONNX file: wall, user and system time and peak memory.

    python benchmarks/cli_large.py model.onnx [--runs 3]
    python benchmarks/cli_large.py --timm repvgg_b3        # export timm's training form first

Runs ``python -m reparam IN OUT --no-check`` and ``python -m reparam IN OUT`` (default check)
``--runs`` times each, alternating, each in a fresh process, then onnxruntime alone on the
input and the output (a session and one run each: the cost the check cannot avoid), and
prints the median of each figure: wall-clock seconds, user and system CPU seconds and the process's peak resident
memory, also as a multiple of the input file's size (issue 14's targets for timm's
RepVGG-B3 training export, 492 MB: ``--no-check`` at most 4 s and 2x the file).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def measure(argv: list[str]) -> dict:
    """Wall, user, system seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    err = p.stderr.read().decode()
    p.stderr.close()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv)} failed: {err.strip()}")
    return {"wall": wall, "user": usage.ru_utime, "sys": usage.ru_stime,
            "peak": usage.ru_maxrss * 1024}


#: what the default check cannot do without: an onnxruntime session on each model, one run
_ORT_ALONE = """
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.log_severity_level = 3
for path in sys.argv[1:]:
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    s.run(None, {i.name: np.random.rand(*[d if isinstance(d, int) else 1 for d in i.shape])
                 .astype(np.float32)})
    del s
"""


def export_timm(name: str, folder: str) -> str:
    import warnings

    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    path = os.path.join(folder, f"{name}-train.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), path, dynamo=False,
                          opset_version=17)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="ONNX file")
    p.add_argument("--timm", help="export this timm model's training form (224x224) instead")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        src = export_timm(args.timm, folder) if args.timm else args.model
        if not src:
            p.error("give an ONNX file or --timm NAME")
        size = os.path.getsize(src)
        out = os.path.join(folder, "out.onnx")
        modes = {"--no-check": ["--no-check"], "default check": []}
        runs: dict = {k: [] for k in modes}
        for _ in range(args.runs):
            for k, flags in modes.items():
                runs[k].append(measure([sys.executable, "-m", "reparam", src, out, "-q", *flags]))
        runs["onnxruntime alone: input and output, one run each"] = [
            measure([sys.executable, "-c", _ORT_ALONE, src, out]) for _ in range(args.runs)]
        print(f"{src}: {size / 1e6:.1f} MB, median of {args.runs} runs")
        print("| mode | wall (s) | user (s) | system (s) | peak memory | / file |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, rs in runs.items():
            m = {f: statistics.median(r[f] for r in rs) for f in rs[0]}
            print(f"| {k} | {m['wall']:.2f} | {m['user']:.2f} | {m['sys']:.2f} | "
                  f"{m['peak'] / 2**20:.0f} MiB | {m['peak'] / size:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
