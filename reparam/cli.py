"""Command line: ``reparam IN OUT`` (also ``python -m reparam IN OUT``).

Reads an ONNX model, folds its re-parameterization branches with the default
rules, checks the result against the original with onnxruntime on random
inputs, and writes it atomically. Prints a table of operator counts before and
after and the rules that fired or were refused.

Exit codes: 0 written; 1 verification failed (nothing written); 2 bad input or
usage (nothing written); 3 internal error; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from . import __version__
from .errors import BadInputError, ReparamError, VerificationError

EXIT_OK, EXIT_VERIFY, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_CHECKS = 3


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, no usage dump
        raise _Usage(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="reparam",
        description="Fold the re-parameterization branches (conv+BN, BN-only and identity "
                    "branches summed by Add, Pad, AveragePool, layer scales) of an ONNX model "
                    "into single convolutions.",
        epilog="OUT (and OUT.data, when written with external data) gets the permission bits "
               "of IN, or keeps its own when it already exists. "
               "Exit codes: 0 written, 1 verification failed (nothing written), "
               "2 bad input or usage (nothing written), 3 internal error, 130 interrupted.")
    p.add_argument("input", metavar="IN", help="ONNX model to read")
    p.add_argument("output", metavar="OUT", nargs="?",
                   help="where to write the fused model (never IN unless --in-place)")
    p.add_argument("--check", type=int, default=DEFAULT_CHECKS, metavar="N",
                   help="run original and fused model with onnxruntime on N random inputs and "
                        f"write nothing if they differ beyond the tolerance (default {DEFAULT_CHECKS})")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--rtol", type=float, metavar="R",
                   help="check tolerance for every output: max|fused - original| <= R * "
                        "max|original| (default: folded blocks within 16x the original's own "
                        "rounding noise, other outputs within the larger of that and 1e-4 for "
                        "float32, 1e-2 float16, 1e-9 float64)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="shape of an input with dynamic dimensions for the check, e.g. "
                        "x:1,3,224,224 (repeatable; dynamic batch dimensions default to 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    p.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--in-place", action="store_true", help="allow OUT to be IN (or omit OUT)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every refused candidate and note")
    p.add_argument("--version", action="version", version=f"reparam {__version__}")
    return p


def _parse_shapes(items) -> dict:
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise _Usage(f"--input-shape {item!r}: expected NAME:D1,D2,... with positive integers")
        shapes[name] = shape
    return shapes


def _check_paths(args) -> str:
    src = args.input
    out = args.output
    if out is None:
        if not args.in_place:
            raise _Usage("missing OUT (pass --in-place to overwrite IN)")
        out = src
    same = os.path.realpath(src) == os.path.realpath(out) or (
        os.path.exists(src) and os.path.exists(out) and os.path.samefile(src, out))
    if same and not args.in_place:
        raise BadInputError(f"OUT {out} is the input file; pass --in-place to overwrite it")
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise BadInputError(f"cannot write {out}: it is a directory")
    if not os.path.isdir(folder):
        raise BadInputError(f"cannot write {out}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise BadInputError(f"cannot write {out}: permission denied")
    return out


def _file_size(path, external: bool = True) -> int | None:
    """Bytes of an ONNX file plus the external data files it names (if it may have some)."""
    try:
        import onnx
        size = os.path.getsize(path)
        if not external:  # no need to parse it (a large model would be read once more)
            return size
        m = onnx.load(path, load_external_data=False)
        folder = os.path.dirname(os.path.abspath(path))
        files = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        return size + sum(os.path.getsize(os.path.join(folder, f)) for f in files
                          if os.path.exists(os.path.join(folder, f)))
    except Exception:
        return None


def _human(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def format_table(report, size_before=None, size_after=None) -> str:
    """Operator counts before and after (ONNX op types), totals and file sizes."""
    ops = sorted(set(report.before) | set(report.after))
    body = [(op, str(report.before.get(op, 0)), str(report.after.get(op, 0))) for op in ops]
    foot = [("total", str(sum(report.before.values())), str(sum(report.after.values())))]
    if size_before is not None or size_after is not None:
        foot.append(("model size", _human(size_before), _human(size_after)))
    head = ("operator", "before", "after")
    w = [max(len(r[i]) for r in body + foot + [head]) for i in range(3)]
    rule = "+" + "+".join("-" * (x + 2) for x in w) + "+"

    def row(r):
        return f"| {r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:>{w[2]}} |"

    return "\n".join([rule, row(head), rule, *map(row, body), rule, *map(row, foot), rule])


class _Progress:
    """Stage messages on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = time.perf_counter()
        self.shown = False

    def __call__(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\033[K[reparam {time.perf_counter() - self.start:6.1f}s] {msg}...")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


def main(argv=None) -> int:
    parser = build_parser()
    progress = _Progress(False)
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return int(e.code or 0)
        shapes = _parse_shapes(args.input_shape)
        if args.check < 0:
            raise _Usage("--check N needs N >= 0")
        checks = 0 if args.no_check else args.check
        out = _check_paths(args)
        progress = _Progress(sys.stderr.isatty() and not args.quiet)
        return _run(args, out, shapes, checks, progress)
    except _Usage as e:
        progress.done()
        print(f"reparam: usage error: {e} (see reparam --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BadInputError as e:
        progress.done()
        print(f"reparam: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except VerificationError as e:
        progress.done()
        print(f"reparam: verification failed, nothing written: {e}", file=sys.stderr)
        return EXIT_VERIFY
    except ReparamError as e:
        progress.done()
        print(f"reparam: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        progress.done()
        print("reparam: interrupted, nothing written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so on one line, keep the traceback for -X dev users
        progress.done()
        print(f"reparam: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("REPARAM_DEBUG"):
            raise
        return EXIT_INTERNAL


def _run(args, out, shapes, checks, progress) -> int:
    from .api import default_rules
    from .frontends.onnx import fuse_model, load, save
    from .frontends.onnx_file import map_large_allocations, release_freed_memory

    map_large_allocations()  # freed weights leave the process (and no huge pages: see there)
    progress("loading")
    original, external = load(args.input)
    if checks:
        from .check_onnx import random_inputs, verify

        feeds = random_inputs(original, checks, shapes, seed=args.seed)  # bad shapes fail early
    blocks: list = []
    held: dict = {}  # the new weights' bytes, written as they are (see fuse_model)
    fused, report = fuse_model(original, default_rules(), progress=progress, what=args.input,
                               validated=True, blocks=blocks, held=held)
    del original  # the check reads IN itself: a large model is held in memory once, not twice
    # written beside OUT first, so that onnxruntime checks the file itself; moved to OUT
    # once it passes, deleted otherwise
    folder, base = os.path.split(os.path.abspath(out))
    try:
        staging = tempfile.mkdtemp(prefix=".reparam-", dir=folder)
    except OSError as e:
        raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    try:
        staged = os.path.join(staging, base)
        progress("writing")
        try:
            save(fused, staged, external=True if external else None, held=held)
        except OSError as e:
            raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
        del fused, held
        release_freed_memory()  # before onnxruntime loads the models: the fused one is written
        out_external = os.path.exists(staged + ".data")
        check = None
        if checks:
            tolerances: dict = {}
            try:
                summary: dict = {}
                worst = verify(args.input, staged, feeds, args.rtol, progress=progress,
                               tolerances=tolerances, blocks=blocks, summary=summary)
            except VerificationError:
                if args.report:
                    _write_report(args.report, report, args, out, None, written=False)
                raise
            check = {"inputs": checks, "worst_ratio": worst, "rtol": args.rtol, **summary,
                     "tolerances": tolerances}
        mode = _output_mode(args.input, out)
        try:
            os.chmod(staged, mode)  # not the staging file's (onnx writes .data files 0600)
            if out_external:
                os.chmod(staged + ".data", mode)
                os.replace(staged + ".data", os.path.join(folder, base + ".data"))
            os.replace(staged, out)
        except OSError as e:
            raise BadInputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        for f in os.listdir(staging):
            os.unlink(os.path.join(staging, f))
        os.rmdir(staging)
    if args.report:
        _write_report(args.report, report, args, out, check, written=True)
    progress.done()
    for r in report.refused:  # even with --quiet: e.g. a fold whose weights would overflow
        if r.warn:
            print(f"reparam: warning: {r.node}: {r.reason}; left unfolded", file=sys.stderr)
    if not args.quiet:
        print(f"reparam {__version__}: {args.input} -> {out}")
        print(format_table(report, _file_size(args.input, external), _file_size(out, out_external)))
        fired = ", ".join(f"{k} x{v}" for k, v in sorted(report.fired.items())) or "nothing"
        print(f"fired:   {fired}")
        print(_refusals(report, args.verbose))
        notes = report.notes if args.verbose else report.notes[:5]
        for note in notes:
            print(note)
        if len(notes) < len(report.notes):
            print(f"... and {len(report.notes) - len(notes)} more notes (--verbose lists them)")
        if check:
            from .check_onnx import format_tolerances
            tol = format_tolerances(check["tolerances"]) + (" (--rtol)" if args.rtol is not None else "")
            print(f"check:   {checks} random input{'s' * (checks > 1)}: {check['blocks']} folded "
                  f"block{'s' * (check['blocks'] != 1)} within {check['block_worst']:.3g} of "
                  f"their tolerance; outputs: worst max|diff|/max|ref| = "
                  f"{check['worst_ratio']:.3g} (tolerance {tol})")
        else:
            print("check:   skipped")
        print(f"wrote {out}")
    return EXIT_OK


def _output_mode(src: str, out: str) -> int:
    """Permission bits for OUT: its own when it exists (as when a shell or cp overwrites a
    file), else IN's."""
    import stat

    for path in (out, src):
        try:
            return stat.S_IMODE(os.stat(path).st_mode) & 0o777
        except OSError:
            continue
    return 0o644


def _refusals(report, verbose: bool) -> str:
    """Refused candidates and layers kept unfolded: every one with ``verbose``, else one line
    per reason with a count and an example (see :class:`reparam.Report`)."""
    lines = report.refusal_lines(verbose) or ["refused nothing"]
    lines += report.kept_lines(verbose)
    if not verbose and len(report.refused) + len(report.kept) > len(lines):
        lines.append("(--verbose lists every refused candidate and kept layer)")
    return "\n".join(lines)


def _write_report(path, report, args, out, check, written) -> None:
    data = report.to_dict()
    data.update(version=__version__, input=args.input, output=out, written=written, check=check)
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise BadInputError(f"cannot write report {path}: {e.strerror or e}") from e


if __name__ == "__main__":
    sys.exit(main())
