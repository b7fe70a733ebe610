"""Inference latency: training graph, ``reparam.fuse`` output and hand-written deploy form.

torch eager (one thread): the eval-mode training model, ``reparam.fuse(model)``
and the deploy form (see :mod:`models`).

onnxruntime (one intra-op and one inter-op thread, sequential executor): the
training export as exported (``ORT_DISABLE_ALL``, onnxruntime runs the graph it
is given), the same file with onnxruntime's own graph optimizations
(``ORT_ENABLE_ALL``, its default: it folds conv+BN but cannot merge parallel
branches), the file the ``reparam`` CLI writes from the training export, and the
deploy export (both also ``ORT_ENABLE_ALL``). Exports use torch's TorchScript
exporter (``dynamo=False``, constant folding on, dynamic batch dimension).

Each number is the median of interleaved runs: all forms of one model take
turns every iteration, in a random order that never runs one form twice in a
row, so that a slow phase of the shared machine hits them alike and none
finds its weights in cache more often; ratios come from one run.
The time is the calling thread's CPU time (torch and onnxruntime compute on
it with one thread): the latency on an idle core, which wall time on a machine
shared with other work overstates by a random wait for a core. Wall-clock
medians are kept too (``wall`` in ``latest.json``). A ratio is the median over
iterations of the two forms' times in the same round. For the torch timings
glibc's malloc keeps freed memory (see :func:`common.warm_heap`); onnxruntime
has its own arenas.

Each model is measured in several fresh processes (:func:`measure_in_subprocess`),
one per pass over all models (:func:`combine`): the heap and onnxruntime's arenas
start alike for every model, not in whatever state the models measured before left
them, and what stays fixed within one process (where its weights and activations
lie, which tenants share the machine that minute) varies between a model's
measurements instead of biasing all of them. QARepVGG's fused and deploy forms
are the same six conv+ReLU, yet single processes measured their batch-32 ratio
anywhere from 0.97 to 1.07; the median over processes spread over the run does not
depend on one of them. Passes alternate the order in which a process creates the
forms (created training, training+ORT-opt, CLI, deploy, MobileOne's CLI/deploy
ratio was 1.02-1.04 in six processes; created in reverse, 0.99-1.01: the graphs
are identical); an even number of passes balances it. The exports and the CLI
output are written once, by the first pass, and loaded by the others.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

from common import interleaved_ms, warm_heap

TORCH_FORMS = ("training", "fused", "deploy", "deploy (fx)")
ORT_FORMS = ("training", "training+ORT-opt", "reparam CLI", "deploy")


def export(model, path: str, hw: int) -> None:
    x = torch.randn(1, 3, hw, hw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


def session(path: str, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def cli(src: str, dst: str) -> None:
    """``reparam SRC DST`` (the command line, with its default onnxruntime check)."""
    r = subprocess.run([sys.executable, "-m", "reparam", src, dst, "-q"], capture_output=True,
                       text=True)
    if r.returncode:
        raise RuntimeError(f"reparam CLI failed ({r.returncode}): {r.stderr.strip()}")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def measure(title: str, training, deploy, hw: int, batches, settings: dict, files: str,
            seed: int = 0) -> list[dict]:
    """Rows ``{model, batch, backend, <form>: ms, ...}`` for one model, torch then onnxruntime.

    ``files`` is the folder of the model's exports and CLI output: written when absent,
    else loaded. ``seed`` draws the order of the forms in each round; an odd ``seed``
    also reverses the order in which the forms are created (see the module docstring)."""
    import reparam

    torch.set_num_threads(1)
    fused = reparam.fuse(training)
    # the deploy form as a torch.fx GraphModule, like the fused model: the same Python
    # call overhead per module (a deploy form with leftover BN already is one)
    if seed % 2:  # the deploy form's weights allocated after the fused model's
        deploy = copy.deepcopy(deploy)
    deploy_fx = deploy if isinstance(deploy, torch.fx.GraphModule) else torch.fx.symbolic_trace(deploy)
    rows = []
    with torch.no_grad():
        x1 = torch.randn(1, 3, hw, hw, generator=torch.Generator().manual_seed(0))
        ref = training(x1)
        errs = {k: _rel(m(x1), ref) for k, m in (("fused", fused), ("deploy", deploy))}
        for b in batches:
            x = torch.randn(b, 3, hw, hw, generator=torch.Generator().manual_seed(b))
            iters, budget, warmup = settings[b]
            fns = {"training": lambda: training(x), "fused": lambda: fused(x),
                   "deploy": lambda: deploy(x), "deploy (fx)": lambda: deploy_fx(x)}
            with warm_heap():
                ms = interleaved_ms(fns, iters, warmup=warmup, budget_s=budget, seed=seed)
            rows.append({"model": title, "batch": b, "backend": "torch",
                         **{k: v[0] for k, v in ms.items()}, "wall": {k: v[1] for k, v in ms.items()},
                         "samples": {k: v[2] for k, v in ms.items()}, "check": max(errs.values())})
    paths = {k: os.path.join(files, f"{k}.onnx") for k in ("training", "deploy", "fused")}
    if not os.path.exists(paths["fused"]):
        os.makedirs(files, exist_ok=True)
        export(training, paths["training"], hw)
        export(deploy, paths["deploy"], hw)
        cli(paths["training"], paths["fused"])
    specs = {"training": (paths["training"], False), "training+ORT-opt": (paths["training"], True),
             "reparam CLI": (paths["fused"], True), "deploy": (paths["deploy"], True)}
    order = list(specs)[::-1] if seed % 2 else list(specs)
    sessions = {k: session(*specs[k]) for k in order}
    sessions = {k: sessions[k] for k in specs}
    feed1 = {"x": x1.numpy()}
    ref = sessions["training"].run(None, feed1)[0]
    err = max(_rel(s.run(None, feed1)[0], ref) for s in sessions.values())
    for b in batches:
        feed = {"x": np.random.default_rng(b).standard_normal((b, 3, hw, hw)).astype(np.float32)}
        iters, budget, warmup = settings[b]
        fns = {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}
        ms = interleaved_ms(fns, iters, warmup=warmup, budget_s=budget, seed=seed)
        rows.append({"model": title, "batch": b, "backend": "onnxruntime",
                     **{k: v[0] for k, v in ms.items()}, "wall": {k: v[1] for k, v in ms.items()},
                     "samples": {k: v[2] for k, v in ms.items()}, "check": err})
    return rows


def measure_in_subprocess(title: str, hw: int | None, batches, settings: dict, files: str,
                          seed: int = 0) -> list[dict]:
    """:func:`measure` of the catalogue model ``title`` (input ``hw``, or the model's own) in a
    fresh Python process (see the module docstring)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        job = {"title": title, "hw": hw, "batches": list(batches), "files": files, "seed": seed,
               "settings": {str(b): list(v) for b, v in settings.items()}, "out": out}
        r = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(job)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"latency of {title} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        with open(out) as f:
            return json.load(f)


def combine(passes: list[list[dict]]) -> list[dict]:
    """One row per (model, batch, backend) from the rows of several passes: each form's CPU
    ms is the median over the rounds of all passes, its wall ms the median of the passes'
    medians; ``passes`` keeps each pass's per-round CPU samples (for
    :func:`common.pass_ratio`), ``check`` the worst error."""
    out = {}
    for rows in passes:
        for r in rows:
            key = (r["model"], r["batch"], r["backend"])
            out.setdefault(key, []).append(r)
    combined = []
    for (model, batch, backend), rs in out.items():
        forms = list(rs[0]["samples"])
        pooled = {k: [t for r in rs for t in r["samples"][k]] for k in forms}
        combined.append({"model": model, "batch": batch, "backend": backend,
                         **{k: statistics.median(pooled[k]) for k in forms},
                         "wall": {k: statistics.median(r["wall"][k] for r in rs) for k in forms},
                         "passes": [r["samples"] for r in rs],
                         "check": max(r["check"] for r in rs)})
    return combined


def _main(job: dict) -> None:
    from models import catalogue

    training, deploy, model_hw = catalogue()[job["title"]]()
    settings = {int(b): tuple(v) for b, v in job["settings"].items()}
    rows = measure(job["title"], training, deploy, job["hw"] or model_hw, job["batches"], settings,
                   job["files"], job["seed"])
    with open(job["out"], "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
