"""Shared helpers of the benchmark suite: paths, timing, memory, markdown.

Nothing here imports torch or onnxruntime at module level, so the worker
processes that measure memory start from a small footprint.
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def add_paths() -> None:
    """Make ``zoo`` (``tests/zoo``) and ``benchmarks`` importable."""
    for p in (os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")):
        if p not in sys.path:
            sys.path.insert(0, p)


# --- timing --------------------------------------------------------------------------

def interleaved_ms(fns: dict, iters: int, warmup: int = 2, budget_s: float | None = None,
                   seed: int = 0) -> dict:
    """Median time (ms) of each zero-argument callable in ``fns``:
    ``{name: (cpu, wall, cpu of every iteration)}``.

    The callables take turns: every iteration runs each once, in a random order
    whose first callable is never the previous iteration's last, so that none
    runs twice in a row (a repeat finds its weights in cache) and each sees the
    same mix of neighbours; a slow phase of the shared machine hits them alike.
    ``cpu`` is the calling thread's CPU time (``time.thread_time``): with one
    thread torch and onnxruntime compute on the calling thread, so it is the
    latency on an idle core, without the waits for a core that other work on
    a shared machine adds to ``wall``. ``budget_s`` stops early (after at least
    5 iterations) once exceeded.
    """
    import random

    names = list(fns)
    rng = random.Random(seed)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    cpu, wall = {n: [] for n in names}, {n: [] for n in names}
    start, last = time.perf_counter(), names[-1]
    for it in range(iters):
        order = names[:]
        rng.shuffle(order)
        if len(order) > 1 and order[0] == last:
            order[0], order[-1] = order[-1], order[0]
        for n in order:
            t, c = time.perf_counter(), time.thread_time()
            fns[n]()
            cpu[n].append(time.thread_time() - c)
            wall[n].append(time.perf_counter() - t)
        last = order[-1]
        if budget_s is not None and it >= 4 and time.perf_counter() - start > budget_s:
            break
    return {n: (1e3 * statistics.median(cpu[n]), 1e3 * statistics.median(wall[n]),
                [1e3 * t for t in cpu[n]]) for n in names}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over iterations of ``a[i] / b[i]``: each pair ran in the same round of
    :func:`interleaved_ms`, so a slow phase of the machine cancels out of each ratio."""
    return statistics.median(x / y for x, y in zip(a, b))


def pass_ratio(passes: list[dict], a: str, b: str) -> tuple[float, list[float]]:
    """``a`` / ``b`` over several processes (passes): the median of each pass's
    :func:`paired_ratio`, and those per-pass ratios."""
    each = [paired_ratio(p[a], p[b]) for p in passes]
    return statistics.median(each), each


@contextlib.contextmanager
def warm_heap():
    """Within the block, glibc's malloc keeps freed memory for reuse (no ``munmap``, no
    heap trimming); yields whether it could be set (glibc only).

    Otherwise every large activation of a torch model is fresh memory whose first
    touch page-faults: up to a third of a batch-32 inference of the small zoo
    networks, and how much depends on the order in which a model frees its tensors
    (a torch.fx GraphModule frees each one right after its last use, eager code
    later) rather than on the computation. A warm heap is what a serving process
    has. On leaving, fixed thresholds of 128 KiB (glibc's initial values) are set,
    so that later allocations (onnxruntime's arenas) get their own mappings again.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        yield False
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    big = ctypes.c_int(2**31 - 1)
    ok = bool(mallopt(m_mmap_threshold, big) and mallopt(m_trim_threshold, big))
    try:
        yield ok
    finally:
        mallopt(m_mmap_threshold, ctypes.c_int(128 * 1024))
        mallopt(m_trim_threshold, ctypes.c_int(128 * 1024))


def median_seconds(fn, runs: int) -> tuple[float, list[float]]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out), out


# --- memory ------------------------------------------------------------------------------

def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Start the peak-RSS count (``VmHWM``) afresh from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``: since exec or the last reset).

    Not ``ru_maxrss``: that also keeps the peak of the process this one was forked
    from before it exec'ed (a worker started by a large parent would inherit it).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_PEAK_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "def _peak():\n"
    "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    sys.stderr.write('\\n__cpu_s__ %r\\n' % (r.ru_utime + r.ru_stime))\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('\\n__peak_kib__ %s\\n' % line.split()[1]); sys.stderr.flush()\n"
    "atexit.register(_peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def run_module_measured(module: str, args: list[str], timeout: float = 900) -> dict:
    """``python -m MODULE ARGS`` in a new process: wall time (interpreter start included),
    CPU time (all its threads), the peak resident memory of that process (its ``VmHWM``
    at exit), exit code, output."""
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, module, *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    peak, cpu, err = None, None, []
    for line in r.stderr.splitlines():
        if line.startswith("__peak_kib__ "):
            peak = int(line.split()[1]) * 1024
        elif line.startswith("__cpu_s__ "):
            cpu = float(line.split()[1])
        elif line:
            err.append(line)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "rc": r.returncode,
            "output": r.stdout + "\n".join(err)}


def run_script(cmd: list[str], timeout: float = 900) -> dict:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return {"seconds": time.perf_counter() - start, "rc": r.returncode,
            "output": r.stdout + r.stderr, "stdout": r.stdout}


# --- formatting ---------------------------------------------------------------------------

def md_table(head: list[str], rows: list[list], align: str | None = None) -> str:
    """A markdown table; ``align`` one char per column (``l``/``r``), default first left."""
    align = align or "l" + "r" * (len(head) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"
