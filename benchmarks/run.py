"""The benchmark suite: one entry point, markdown tables and plots.

    python benchmarks/run.py                      # everything (about 35 minutes on 2 cores)
    python benchmarks/run.py --sections latency   # some of: latency, cost, error
    python benchmarks/run.py --quick              # a smoke run on tiny models (under a minute)
    python benchmarks/run.py --readme             # ... and copy the results into README.md

Writes ``benchmarks/results/latest.md`` (or ``--out DIR``) with

* inference latency in torch eager and onnxruntime, one thread, batch 1 and
  32, median of interleaved runs: training graph, ``reparam.fuse`` output and
  hand-written deploy form (torch); training export as exported, with
  onnxruntime's own optimizations, the ``reparam`` CLI output and the deploy
  export (onnxruntime), for RepGhostNet at every width and the test-zoo
  families (:mod:`latency`);
* fusing cost: ``reparam.fuse`` on RepGhostNet-1.0x against its hand-written
  conversion, and wall time and peak memory of ``reparam.fuse`` and of the CLI
  on RepVGG-like models from 30 K to 105 M parameters (a 420 MB ONNX file)
  (:mod:`cost`);
* the numerical error of reparam's float64 folding against a float32
  hand-written conversion (:mod:`error`);

each against the targets of the project, and the plots ``latency.png`` and
``cost.png`` beside it. Exits 0 whatever the numbers (it is a benchmark) unless
``--strict``, then 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS, ROOT, add_paths, human_bytes, human_count, md_table, verdict  # noqa: E402

add_paths()

SECTIONS = ("latency", "cost", "error")
LATENCY_TARGET = 1.03
FUSE_S_TARGET = 0.3
CLI_S_TARGET = 30.0
CLI_MEM_TARGET = 3.0
ERROR_TARGET = 1e-6
SLOPE_TARGET = 1.1  # "at most linear": fitted exponent of cost against parameter count
README_BEGIN, README_END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
COMMAND = "python benchmarks/run.py --readme"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one small RepGhostNet and one zoo family, tiny inputs, "
                        "two small cost sizes; numbers are not meaningful")
    p.add_argument("--out", default=RESULTS, help="folder for latest.md and the plots")
    p.add_argument("--readme", action="store_true",
                   help="also replace the Benchmarks section of README.md with the results")
    p.add_argument("--widths", help="RepGhostNet widths (comma-separated; default: all)")
    p.add_argument("--families", help="zoo families (comma-separated; default: all)")
    p.add_argument("--no-cli", action="store_true", help="cost: skip the CLI measurements")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--render", metavar="JSON",
                   help="measure nothing: write the report and plots from a latest.json")
    return p.parse_args(argv)


#: latency: passes over all models, each model in a fresh process per pass, and the runs per
#: pass and batch size: (rounds, time budget in s: at least 5 rounds, warm-up rounds)
#: (even: passes alternate the order in which the forms are created)
LATENCY_PASSES = 6
LATENCY_SETTINGS = {1: (170, 2.5, 5), 32: (5, 10.0, 1)}


def log(msg: str) -> None:
    print(msg, flush=True)


# --- sections --------------------------------------------------------------------------

def run_latency(args) -> dict:
    import latency
    from common import warm_heap
    from models import catalogue

    with warm_heap() as warm:  # only to report whether it can be set
        pass

    if args.quick:
        cat = catalogue(widths=(0.5,), families=("repvgg",))
        batches, settings, hw, passes = (1, 2), {1: (5, 3.0, 1), 2: (3, 3.0, 1)}, 64, 2
    else:
        cat = catalogue(widths=_floats(args.widths), families=_strs(args.families))
        batches, settings, hw, passes = (1, 32), LATENCY_SETTINGS, None, LATENCY_PASSES
    results = []
    with tempfile.TemporaryDirectory() as files:
        for p in range(passes):
            rows = []
            for i, title in enumerate(cat):
                t = time.perf_counter()
                rows += latency.measure_in_subprocess(title, hw, batches, settings,
                                                      os.path.join(files, str(i)), seed=p)
                log(f"  latency {title}, pass {p + 1}/{passes}: {time.perf_counter() - t:.0f} s")
            results.append(rows)
    return {"rows": latency.combine(results), "batches": list(batches), "hw": hw,
            "passes": passes, "settings": {str(b): list(v) for b, v in settings.items()},
            "warm_heap": warm}


def run_cost(args) -> dict:
    import cost
    from models import COST_SIZES, QUICK_COST_SIZES

    out = {"repghost": cost.repghost_fuse_time(3 if args.quick else 15)}
    log(f"  fuse RepGhostNet-1.0x: {out['repghost']}")
    out["sweep"] = cost.measure(QUICK_COST_SIZES if args.quick else COST_SIZES,
                                with_cli=not args.no_cli, log=log)
    return out


def run_error(args) -> dict:
    import error
    from models import catalogue

    if args.quick:
        cat = catalogue(widths=(0.5,), families=("repvgg",))
    else:
        cat = catalogue(widths=_floats(args.widths), families=_strs(args.families))
    rows = []
    for title, build in cat.items():
        training, _, hw = build()
        rows.append(error.measure(title, training, 64 if args.quick else hw))
        log(f"  error {title}: {rows[-1]}")
    return {"rows": rows}


def _floats(s):
    return tuple(float(w) for w in s.split(",")) if s else None


def _strs(s):
    return tuple(s.split(",")) if s else None


# --- report ----------------------------------------------------------------------------

def _ratio(r, a, b):
    """``a`` / ``b`` latency: the median over passes of each pass's median paired ratio."""
    from common import pass_ratio

    return pass_ratio(r["passes"], a, b)[0]


def _spread(r, a, b) -> str:
    """The lowest and highest per-pass ratio ``a`` / ``b``."""
    from common import pass_ratio

    each = pass_ratio(r["passes"], a, b)[1]
    return f"{min(each):.3f} - {max(each):.3f}"


def latency_md(lat: dict, checks: list) -> str:
    rows = lat["rows"]
    if any("passes" not in r for r in rows):
        sys.exit("run.py: this latest.json has no per-pass latency samples (written before "
                 "measurements were split into passes); measure again")
    t_rows, o_rows = [], []
    worst = {}
    for r in rows:
        if r["backend"] == "torch":
            f, t = _ratio(r, "fused", "deploy"), _ratio(r, "training", "deploy")
            fx_ratio = _ratio(r, "fused", "deploy (fx)")
            t_rows.append([r["model"], r["batch"], f"{r['training']:.2f}", f"{r['fused']:.2f}",
                           f"{r['deploy']:.2f}", f"{r['deploy (fx)']:.2f}", f"**{f:.3f}**",
                           _spread(r, "fused", "deploy"), f"{fx_ratio:.3f}", f"{t:.2f}"])
        else:
            f = _ratio(r, "reparam CLI", "deploy")
            o_rows.append([r["model"], r["batch"], f"{r['training']:.2f}",
                           f"{r['training+ORT-opt']:.2f}", f"{r['reparam CLI']:.2f}",
                           f"{r['deploy']:.2f}", f"**{f:.3f}**",
                           _spread(r, "reparam CLI", "deploy"),
                           f"{_ratio(r, 'training+ORT-opt', 'deploy'):.2f}",
                           f"{_ratio(r, 'training', 'deploy'):.2f}"])
        key = (r["backend"], r["batch"])
        worst[key] = max(worst.get(key, (0, "")), (f, r["model"]))
    for (backend, batch), (f, model) in sorted(worst.items()):
        name = "torch eager" if backend == "torch" else "onnxruntime"
        checks.append((f"fused / deploy latency, {name}, batch {batch} (worst: {model})",
                       f"{f:.3f}", f"<= {LATENCY_TARGET}", f <= LATENCY_TARGET))
    hw = f"{lat['hw']}x{lat['hw']}" if lat["hw"] else "224x224"
    passes, settings = lat["passes"], {int(b): v for b, v in lat["settings"].items()}
    parts = [
        "### Inference latency",
        f"One thread, input {hw}. Each model is measured in {passes} fresh processes, one per "
        "pass over all models, so that what stays fixed within a process (where weights and "
        "activations lie, the heap and onnxruntime's arenas, what else runs on the shared "
        "machine that minute) varies between a model's measurements instead of biasing them "
        "all: single processes disagree by several percent on forms that compute the same "
        "thing (QARepVGG's fused and deploy forms are the same six conv+ReLU; see '... per "
        "process'). Passes alternate the order in which the forms are created (the order in "
        "which onnxruntime sessions of identical graphs were created shifted their ratio by "
        "about 2%). In each process all forms "
        "of the model take turns, in a random order each round ("
        + ", ".join(f"batch {b}: up to {n:,} rounds or {t:g} s"
                    for b, (n, t, _) in settings.items()) +
        " per process). Times are the calling thread's CPU time, the latency on an idle core "
        "(wall-clock medians are in `latest.json`); ms per inference is the median over all "
        "rounds. A ratio is the median over the processes of each process's median of the "
        "two forms' times in the same round; '... per process' gives the lowest and highest "
        "of those per-process ratios. "
        "For torch, "
        "glibc malloc keeps freed memory (a warm heap, as in a serving process"
        + ("" if lat.get("warm_heap", True) else "; could not be set here") +
        "): otherwise first-touch page faults of fresh activations, up to a third of a "
        "batch-32 inference of the small networks, depend on when a model frees its tensors. "
        "The zoo families are the small networks of `tests/zoo` (15 K - 60 K parameters): at "
        "batch 1 they run in 1 - 3 ms, where the Python overhead of calling modules shows.",
        "",
        "torch eager: training graph (eval mode), `reparam.fuse` output, hand-written deploy "
        "form (its leftover conv+BN pairs folded by `torch.fx.experimental.optimization.fuse`, "
        "which makes RepGhostNet's a GraphModule), and the deploy form traced by "
        "`torch.fx.symbolic_trace` (a GraphModule like the fused model, which however reaches "
        "each module with one attribute lookup, the traced deploy form with one per level of "
        "nesting):",
        "",
        md_table(["model", "batch", "training", "fused", "deploy", "deploy (fx)",
                  "fused / deploy", "... per process", "fused / deploy (fx)",
                  "training / deploy"], t_rows),
        "",
        "onnxruntime (TorchScript exports): the training export as exported (graph "
        "optimizations off), the same with onnxruntime's own optimizations (`ORT_ENABLE_ALL`, "
        "its default), the `reparam` CLI's output of the training export, the deploy export "
        "(both `ORT_ENABLE_ALL`):",
        "",
        md_table(["model", "batch", "training", "training + ORT opt", "reparam CLI", "deploy",
                  "CLI / deploy", "... per process", "ORT opt / deploy", "training / deploy"],
                 o_rows),
    ]
    return "\n".join(parts)


def cost_md(c: dict, checks: list) -> str:
    import cost

    rg = c["repghost"]
    fuse_s, hand = rg["reparam.fuse"], rg["convert_to_deploy + fx conv-BN fuse"]
    checks.append(("`reparam.fuse` wall time, RepGhostNet-1.0x", f"{fuse_s:.3f} s",
                   f"<= {FUSE_S_TARGET} s", fuse_s <= FUSE_S_TARGET))
    checks.append(("... against the hand-written conversion (convert_to_deploy + fx conv-BN fuse)",
                   f"{fuse_s / hand:.2f}x ({hand:.3f} s)", "<= 1x", fuse_s <= hand))
    parts = ["### Fusing cost", "",
             "`reparam.fuse` on RepGhostNet-1.0x (median of interleaved runs, no verification) "
             "against its hand-written per-class conversion:", "",
             md_table(["conversion", "wall time (s)"], [[k, f"{v:.3f}"] for k, v in rg.items()])]
    rows = c["sweep"]
    has_cli = rows and "cli_s" in rows[0]
    table = []
    for r in rows:
        line = [f"{r['width']} x {r['depth']}", human_count(r["params"]), f"{r['fuse_s']:.2f}",
                f"{r['fuse_cpu_s']:.2f}", human_bytes(r["fuse_extra"]),
                f"{r['fuse_extra'] / r['param_bytes']:.2f}"]
        if has_cli:
            line += [human_bytes(r["onnx_bytes"]), f"{r['cli_s']:.1f}", f"{r['cli_cpu_s']:.1f}",
                     human_bytes(r["cli_peak"]), f"{r['cli_peak'] / r['onnx_bytes']:.2f}"]
        table.append(line)
    head = ["width x depth", "params", "fuse (s)", "fuse CPU (s)", "fuse peak memory",
            "/ param bytes"]
    if has_cli:
        head += ["ONNX file", "CLI (s)", "CLI CPU (s)", "CLI peak memory", "/ file size"]
    parts += ["", "RepVGG-like networks (blocks of `ReLU(BN(conv3x3) + BN(conv1x1) + BN)`), each "
              "size in a fresh process: `reparam.fuse` wall and CPU time (the median of 3 "
              "calls) and its peak resident memory above what the process held before; the "
              "CLI (`python -m reparam IN OUT`, default check with onnxruntime on 3 random inputs, interpreter start "
              "included) wall and CPU time (all threads) and the peak resident memory of its "
              "process:", "", md_table(head, table)]
    big = [r for r in rows if r["params"] >= 1e6]
    if len(big) >= 2:
        p = [r["params"] for r in big]
        fits = [("`reparam.fuse` CPU time", cost.slope(p, [r["fuse_cpu_s"] for r in big])),
                ("`reparam.fuse` peak memory", cost.slope(p, [max(r["fuse_extra"], 1) for r in big]))]
        if has_cli:
            fits += [("CLI CPU time", cost.slope(p, [r["cli_cpu_s"] for r in big])),
                     ("CLI peak memory", cost.slope(p, [r["cli_peak"] for r in big]))]
        parts += ["", "Growth: exponent `p` of a least-squares fit `cost ~ params^p` over the "
                  "sizes of 1 M parameters and more (1 = linear; times are CPU times, which "
                  "other work on the shared machine does not inflate):", "",
                  md_table(["cost", "p"], [[k, f"{v:.2f}"] for k, v in fits])]
        for k, v in fits:
            checks.append((f"growth of {k} with parameter count (exponent)", f"{v:.2f}",
                           f"<= {SLOPE_TARGET}", v <= SLOPE_TARGET))
    if has_cli:
        top = max(rows, key=lambda r: r["onnx_bytes"])
        size = f"{top['onnx_bytes'] / 1e6:.0f} MB"
        checks.append((f"CLI wall time, {size} ONNX model", f"{top['cli_s']:.1f} s",
                       f"<= {CLI_S_TARGET:.0f} s", top["cli_s"] <= CLI_S_TARGET))
        m = top["cli_peak"] / top["onnx_bytes"]
        checks.append((f"CLI peak memory, {size} ONNX model", f"{m:.2f}x file "
                       f"({human_bytes(top['cli_peak'])})", f"<= {CLI_MEM_TARGET:.0f}x",
                       m <= CLI_MEM_TARGET))
    return "\n".join(parts)


def error_md(e: dict, checks: list) -> str:
    rows, table = e["rows"], []
    worst, above = 0.0, []
    for r in rows:
        table.append([r["model"], f"{r['reparam']:.2e}", f"{r['hand_f32']:.2e}",
                      f"{r['reparam'] / r['hand_f32']:.2f}" if r["hand_f32"] else "-",
                      f"{r['reparam_f32_inference']:.2e}"])
        worst = max(worst, r["reparam"])
        if r["reparam"] > r["hand_f32"]:
            above.append(r["model"])
    checks.append(("folding error, relative (worst model)", f"{worst:.2e}", f"<= {ERROR_TARGET:g}",
                   worst <= ERROR_TARGET))
    checks.append(("... never above the float32 hand-written conversion's",
                   "above for " + ", ".join(above) if above else f"below for all {len(rows)}",
                   "never above", not above))
    return "\n".join([
        "### Numerical error of the folding", "",
        "`max|y - y_ref| / max|y_ref|` on 4 random inputs, `y_ref` from a float64 copy of the "
        "training model. Both conversions keep float32 weights and are evaluated in float64 (the "
        "error of the conversion alone); reparam folds in float64 and rounds once, the "
        "hand-written conversion runs the same per-class code with float32 arithmetic (as the "
        "authors' released conversions do). Last column: the fused model in float32 inference, "
        "for scale.", "",
        md_table(["model", "reparam (float64 folding)", "hand-written (float32)", "ratio",
                  "reparam, float32 inference"], table)])


_ARGV = sys.argv[1:]  # the measuring run's options (kept in latest.json for --render)


def environment_md(elapsed: float, args) -> str:
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cmd = "python benchmarks/run.py " + " ".join(_ARGV)
    return (f"Measured {datetime.date.today().isoformat()} on {cpu}, {os.cpu_count()} cores shared "
            f"with other work, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}; "
            f"`{cmd.strip()}` took {elapsed / 60:.1f} min.")


def plots(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    lat = results.get("latency")
    if lat:
        batches = lat["batches"]
        fig, axes = plt.subplots(2, len(batches), figsize=(6.5 * len(batches), 9), squeeze=False)
        for row, (backend, fused, title) in enumerate(
                (("torch", "fused", "torch eager"), ("onnxruntime", "reparam CLI", "onnxruntime"))):
            for col, b in enumerate(batches):
                ax = axes[row][col]
                rs = [r for r in lat["rows"] if r["backend"] == backend and r["batch"] == b]
                names = [r["model"] for r in rs]
                ys = range(len(rs))
                ax.barh([y + 0.2 for y in ys], [_ratio(r, "training", "deploy") for r in rs], 0.4,
                        color="#c8c8c8", label="training graph / deploy")
                if backend == "onnxruntime":
                    ax.barh([y + 0.2 for y in ys], [_ratio(r, "training+ORT-opt", "deploy") for r in rs],
                            0.4, color="#8c8c8c", label="training + ORT optimizations / deploy")
                ax.barh([y - 0.2 for y in ys], [_ratio(r, fused, "deploy") for r in rs], 0.4,
                        color="#1f77b4", label=("reparam.fuse" if backend == "torch"
                                                else "reparam CLI") + " / deploy")
                ax.axvline(1.0, color="k", lw=0.8)
                ax.axvline(LATENCY_TARGET, color="#d62728", lw=0.8, ls="--", label="target 1.03")
                ax.set_yticks(list(ys), names, fontsize=8)
                ax.invert_yaxis()
                ax.set_xscale("log")
                ax.set_title(f"{title}, batch {b}: latency / deploy latency", fontsize=10)
                ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = os.path.join(out, "latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    cost = results.get("cost")
    if cost and cost.get("sweep"):
        rows = cost["sweep"]
        p = [r["params"] for r in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
        a1.loglog(p, [r["fuse_s"] for r in rows], "o-", label="reparam.fuse")
        if "cli_s" in rows[0]:
            a1.loglog(p, [r["cli_s"] for r in rows], "s-", label="CLI (incl. check, start-up)")
            a2.loglog(p, [r["cli_peak"] for r in rows], "s-", label="CLI process peak")
            a2.loglog(p, [3 * r["onnx_bytes"] for r in rows], ":", color="#d62728",
                      label="3x ONNX file size (target)")
        a2.loglog(p, [max(r["fuse_extra"], 1) for r in rows], "o-", label="reparam.fuse, above baseline")
        a2.loglog(p, [r["param_bytes"] for r in rows], "--", color="gray",
                  label="parameter bytes (linear)")
        top = rows[-1]
        a1.loglog(p, [top["fuse_s"] * x / top["params"] for x in p], "--", color="gray",
                  label="linear through the largest")
        for ax, t, yl in ((a1, "wall time", "seconds"), (a2, "peak resident memory", "bytes")):
            ax.set_xlabel("parameters")
            ax.set_ylabel(yl)
            ax.set_title(f"Fusing cost: {t} (RepVGG-like)", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out, "cost.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report_md(results: dict, elapsed: float, args, images: list[str], image_dir: str) -> tuple[str, bool]:
    checks = []
    body = []
    if "latency" in results:
        body.append(latency_md(results["latency"], checks))
    if "cost" in results:
        body.append(cost_md(results["cost"], checks))
    if "error" in results:
        body.append(error_md(results["error"], checks))
    summary = md_table(["target", "measured", "required", "result"],
                       [[c[0], c[1], c[2], verdict(c[3])] for c in checks], "lrrl")
    pics = "\n".join(f"![{os.path.splitext(os.path.basename(p))[0]}]"
                     f"({image_dir}/{os.path.basename(p)})" for p in images)
    quick = ("**Quick smoke run: tiny models and inputs, the numbers mean nothing.**\n\n"
             if args.quick else "")
    text = "\n\n".join([quick + environment_md(elapsed, args), summary, pics] + body) + "\n"
    return text, all(c[3] for c in checks)


def update_readme(section: str) -> None:
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"README.md has no {README_BEGIN} ... {README_END} markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(head + README_BEGIN + "\n" + section + README_END + tail)


def main(argv=None) -> int:
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {}
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        start -= results.pop("_seconds", 0.0)
        _ARGV[:] = results.pop("_argv", _ARGV)
    for name in SECTIONS:
        if name in sections and not args.render:
            log(f"{name}...")
            t = time.perf_counter()
            results[name] = {"latency": run_latency, "cost": run_cost, "error": run_error}[name](args)
            log(f"{name}: {time.perf_counter() - t:.0f} s")
            with open(os.path.join(args.out, "latest.json"), "w") as f:  # kept if a later one fails
                json.dump({**results, "_seconds": time.perf_counter() - start, "_argv": _ARGV},
                          f, indent=1, default=str)
    elapsed = time.perf_counter() - start
    images = plots(results, args.out)
    text, ok = report_md(results, elapsed, args, images, ".")
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(text)
    log(text)
    if args.readme:
        readme_dir = os.path.relpath(args.out, ROOT)
        section, _ = report_md(results, elapsed, args, images, readme_dir)
        section += f"\nRegenerate with `{COMMAND}` (tables: `benchmarks/results/latest.md`).\n"
        update_readme(section)
        log("README.md updated")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
