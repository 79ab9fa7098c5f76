"""The ``shardspec`` command: check, list, explain, fill and start spec files.

Nothing here imports torch or torch_xla: every answer comes from the schema, the
expression parser and the oracle (DTensor's rules in pure Python).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, cache
from .expand import Variant, expand, parse_device_counts
from .problems import Mark, Problem
from .report import table
from .requires import runs_at
from .spec import DEFAULT_ENGINES, SUFFIXES, Case, SpecFile, parse_engines, read
from .verdict import verdict
from .words import did_you_mean

DEFAULT_DEVICES = (1, 2, 4, 8)

DESCRIPTION = """\
shardspec checks and explains sharding spec files: the YAML files in specs/ that
describe how a tensor (or a small model) is split over devices. None of these
commands needs a device or torch; to run the cases on XLA, use ./run specs.
"""

EXAMPLES = """\
examples:
  shardspec validate                      check every spec file in specs/
  shardspec validate specs/mine.yaml      check one file
  shardspec list                          which cases run at which device count
  shardspec explain specs/distribute_tensor.yaml::shard_1d --devices 4
                                          show which device holds which piece
  shardspec fill specs/mine.yaml          write the expected shapes into cases that lack them
  shardspec new mine                      start specs/mine.yaml from a commented example

Run `shardspec COMMAND --help` for the details of one command.
"""


class UsageError(Exception):
    """A mistake in how the command was called: printed plainly, exit status 2."""


# --- shared helpers -----------------------------------------------------------------


def device_list(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8), sorted; argparse shows the message when it is wrong."""
    try:
        return tuple(sorted(parse_device_counts(text)))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def engine_list(text: str) -> tuple[str, ...]:
    try:
        return parse_engines(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_count(text: str) -> int:
    counts = device_list(text)
    if len(counts) != 1:
        raise argparse.ArgumentTypeError(f"'{text}': give one device count, such as 4")
    return counts[0]


def spec_files(paths: list[str]) -> list[tuple[Path, str]]:
    """The files to read, with the name to show: folders are searched for *.yaml / *.yml
    (except in hidden folders such as .git or .venv)."""
    found: dict[Path, str] = {}
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in SUFFIXES
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not inside:
                raise UsageError(f"the folder {arg} holds no spec files (*.yaml or *.yml)")
            for p in inside:
                found.setdefault(p.resolve(), str(p))
        elif path.is_file():
            found.setdefault(path.resolve(), str(path))
        else:
            hint = " (run shardspec from the folder that holds specs/)" if arg == "specs" else ""
            raise UsageError(f"no such file or folder: {arg}{hint}")
    return [(p, shown) for p, shown in found.items()]


def variants_of(case: Case, n: int) -> list[Variant]:
    """``expand`` for the xla engine (it never raises: a crash becomes a located problem)."""
    return expand(case, "xla", n)


def word(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def counts_text(counts: tuple[int, ...] | list[int]) -> str:
    return ", ".join(map(str, counts))


# --- validate -----------------------------------------------------------------------


@dataclass
class Found:
    """A problem, and the device counts at which it showed (empty: at every count)."""

    problem: Problem
    devices: list[int] = field(default_factory=list)
    fine: list[int] = field(default_factory=list)  # counts at which the case is fine

    def text(self) -> str:
        if not self.fine:
            return str(self.problem)
        return (
            f"{self.problem} (at n={counts_text(self.devices)}; fine at n={counts_text(self.fine)})"
        )

    def as_json(self) -> dict:
        return {**self.problem.as_json(), "devices": self.devices or None}


def problems_of(
    spec: SpecFile, counts: tuple[int, ...], expanded: cache.Expanded | None = None
) -> tuple[list[Found], list[Problem]]:
    """Every problem of a file that needs no device, one per place in the file, and the
    warnings: things that run but may not mean what the author thinks. ``expanded``: the
    file's variants on xla at ``counts``, already made (from the cache)."""
    out = [Found(p) for p in spec.problems]
    warnings: list[Problem] = []
    for index, case in enumerate(spec.cases):
        if case.problems:
            out.extend(Found(p) for p in case.problems)
            continue
        at: dict[tuple[str, Mark], Found] = {}  # one per place: the first n's message
        fine = []
        kinds: set[str] = set()
        for n in counts:
            variants = expanded.of(index, "xla", n) if expanded else variants_of(case, n)
            verdicts = [verdict(v) for v in variants]
            kinds.update(v.kind for v in verdicts)
            if not any(v.kind in ("error", "skip") for v in verdicts):
                fine.append(n)
            for problem in (p for v in verdicts for p in v.problems):
                found = at.setdefault((problem.path, problem.mark), Found(problem, fine=fine))
                if n not in found.devices:
                    found.devices.append(n)
        out.extend(at.values())
        warnings.extend(_warnings(case, counts, kinds))
    unique: dict[tuple, Found] = {}
    for found in out:
        unique.setdefault((found.problem.mark, found.problem.message), found)
    return sorted(unique.values(), key=lambda f: f.problem.mark), sorted(
        warnings, key=lambda p: p.mark
    )


def _warnings(case: Case, counts: tuple[int, ...], kinds: set[str]) -> list[Problem]:
    out = []
    xfail = case.data.get("xfail")
    if isinstance(xfail, dict) and "checks" not in xfail:
        out.append(
            case.problem(
                ("xfail",),
                "this xfail names no checks, so any failure counts as the expected one; name "
                "the checks that fail, such as xfail: {reason: ..., checks: [shards]} (see "
                "`checks` in the README for their names)",
            )
        )
    if kinds == {"skip"} and "skip" not in case.data:
        where = ("requires",) if "requires" in case.data else ()
        elsewhere = ", ".join(map(str, runs_at(case))) or "none up to 16"
        out.append(
            case.problem(
                where,
                f"the case runs at none of the device counts checked (n={counts_text(counts)}): "
                f"its requires skip them all; it runs at n={elsewhere}",
            )
        )
    return out


def _checked(
    expanded: cache.Expanded, counts: tuple[int, ...]
) -> tuple[int, list[Found], list[Problem]]:
    """One file's case count, problems and warnings (what validate prints of it)."""
    mine, warnings = problems_of(expanded.spec, counts, expanded)
    return len(expanded.spec.cases), mine, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    files = spec_files(args.paths)
    counts: tuple[int, ...] = args.devices
    found: list[Found] = []
    warned: list[Problem] = []
    cases = 0
    bad_files = 0
    # Shared with pytest run on the same paths: <its cache_dir>/d/shardspec (runner.cache).
    store = cache.command_store([Path(p) for p in args.paths], enabled=not args.no_cache)
    keys = [("xla", n) for n in counts]
    # Files are checked one per core, in forked processes; each sends back its problems.
    checked = functools.partial(_checked, counts=counts)
    ahead = store.prefetch(files, keys, then=checked, all_files=True)
    for path, shown in files:
        done = ahead.take(path, shown) if ahead is not None else None
        count, mine, warnings = done[1] if done else checked(store.expanded(path, shown, keys))
        cases += count
        bad_files += bool(mine)
        found.extend(mine)
        warned.extend(warnings)
    store.close()
    if args.format == "json":
        document = {
            "devices": list(counts),
            "counts": {
                "files": len(files),
                "cases": cases,
                "problems": len(found),
                "files_with_problems": bad_files,
                "warnings": len(warned),
            },
            "problems": [f.as_json() for f in found],
            "warnings": [w.as_json() for w in warned],
        }
        print(json.dumps(document, indent=2))
        return 1 if found else 0
    for f in found:
        print(f.text())
    for w in warned:
        print(f"{w.path}:{w.mark.line}:{w.mark.col}: warning: {w.message}")
    checked = (
        f"{word(len(files), 'file')}, {word(cases, 'case')}, checked at n={counts_text(counts)}"
    )
    also = f"; {word(len(warned), 'warning')}" if warned else ""
    if found:
        print(f"{checked}: {word(len(found), 'problem')} in {word(bad_files, 'file')}{also}")
        return 1
    print(f"{checked}: no problems{also}")
    return 0


# --- list ---------------------------------------------------------------------------


def status(variants: list[Variant], file_problems: list[Problem]) -> tuple[str, str]:
    """The short cell text for one case at one n, and its kind (run, skip, xfail or error).

    The same verdict the plugin acts on: a broken case is an error, whatever it skips.
    """
    found = [verdict(v, file_problems) for v in variants]
    errors = [f for f in found if f.kind == "error"]
    if errors:
        first = errors[0]
        where = "the file" if first.file_broken else f"line {first.problems[0].mark.line}"
        return f"error ({where})", "error"
    first_verdict = found[0]
    if first_verdict.kind == "skip":
        reason = re.sub(r"^requires (.*), but this run has n=\d+$", r"\1", first_verdict.reason)
        return f"skip ({_short(reason, 30)})", "skip"
    kind = first_verdict.kind
    return (kind if len(variants) == 1 else f"{kind} x{len(variants)}"), kind


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_list(args: argparse.Namespace) -> int:
    counts: tuple[int, ...] = args.devices
    tally: dict[str, int] = {"run": 0, "xfail": 0, "skip": 0, "error": 0}
    files = spec_files(args.paths)
    cases = 0
    for path, shown in files:
        spec = read(path, shown)
        print(shown)
        for problem in spec.problems:
            print(f"  {problem}")
        if not spec.cases:
            print("  (no cases)")
            continue
        rows = [["case", "engine", *(f"n={n}" for n in counts)]]
        for case in spec.cases:
            cases += 1
            for engine in args.engines:
                row = [case.id, engine]
                for n in counts:
                    variants = expand(case, engine, n)
                    cell, kind = status(variants, spec.problems)
                    tally[kind] += len(variants)
                    row.append(cell)
                rows.append(row)
        print("\n".join(table(rows)))
    summary = ", ".join(f"{count} {kind}" for kind, count in tally.items())
    print(
        f"{word(cases, 'case')} in {word(len(files), 'file')} at n={counts_text(counts)}; tests: {summary}"
    )
    return 0


# --- explain ------------------------------------------------------------------------


def find_case(target: str) -> tuple[SpecFile, Case, int | None]:
    """``FILE::ID`` (a pytest id like ``FILE::ID[xla-n4-grad]`` works too)."""
    file, sep, rest = target.partition("::")
    if not Path(file).is_file():
        raise UsageError(
            f"no such spec file: {file} (write FILE::ID, such as specs/distribute_tensor.yaml::shard_1d)"
        )
    spec = read(file, file)
    ids = [c.id for c in spec.cases]
    listing = f"\nthe cases in {file} are: {', '.join(ids)}" if ids else f"\n{file} has no cases"
    if not sep or not rest:
        raise UsageError(f"name a case after the file, as in {file}::ID{listing}")
    case_id, _, bracket = rest.partition("[")
    n_in_id = re.search(r"\bn(\d+)\b", bracket)
    case = next((c for c in spec.cases if c.id == case_id), None)
    if case is None:
        raise UsageError(f"no case '{case_id}' in {file}{did_you_mean(case_id, ids)}{listing}")
    return spec, case, int(n_in_id.group(1)) if n_in_id else None


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain

    spec, case, n_in_id = find_case(args.target)
    n = args.devices or n_in_id or 4
    text, ok = explain(spec, case, variants_of(case, n))
    print(text)
    return 0 if ok else 1


# --- fill and new -------------------------------------------------------------------


def cmd_fill(args: argparse.Namespace) -> int:
    from .fill import fill_file

    files = spec_files(args.paths)
    changed_cases = changed_files = errors = 0
    observe, pool = None, None
    if args.engine:
        from .executor import Pool, WorkerFault

        pool = Pool()
        what = "DTensor itself on the CPU" if args.engine == "native" else "torch_xla on the CPU"
        print(
            f"shardspec fill: running {what} (engine {args.engine}) to observe the values of "
            "step cases; the shapes and placements written are what it gave"
        )

        def observe(variant):
            request = dict(variant.request, case=f"{variant.case.doc.path}::{variant.case.id}")
            try:
                return pool.run(args.engine, variant.n, request, 120.0).observation
            except WorkerFault as fault:
                raise UsageError(f"engine {args.engine} failed: {fault}") from None

    try:
        results = [
            (
                shown,
                fill_file(
                    path,
                    shown,
                    args.devices,
                    write=not args.check,
                    sharding_spec=args.sharding_spec,
                    engine=args.engine,
                    observe=observe,
                ),
            )
            for path, shown in files
        ]
    finally:
        if pool is not None:
            pool.close()
    for _shown, result in results:
        for line in result.lines:
            print(line)
        errors += result.errors
        changed_cases += result.changed
        changed_files += bool(result.changed)
    done = "would change" if args.check else "changed"
    print(
        f"{word(len(files), 'file')} at n={counts_text(args.devices)}: {word(changed_cases, 'case')} "
        f"{done} in {word(changed_files, 'file')}"
        + (
            f"; {word(errors, 'file or case', 'files or cases')} not filled: see above"
            if errors
            else ""
        )
    )
    if args.check and changed_cases:
        print("run `shardspec fill` (without --check) to write them")
        return 1
    return 1 if errors else 0


def cmd_new(args: argparse.Namespace) -> int:
    from .scaffold import create

    try:
        path = create(args.name, Path(args.folder))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {path}")
    print(
        f"next: edit it, then run `shardspec validate {path}`, `shardspec explain {path}::split_rows`"
    )
    print(f"and run its cases on XLA with `.venv/bin/python -m pytest {path}`")
    return 0


# --- the parser ---------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="shardspec",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"shardspec {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def paths(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "paths",
            nargs="*",
            default=["specs"],
            metavar="PATH",
            help="spec files, or folders to search for *.yaml files (default: specs)",
        )

    def devices(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--devices",
            type=device_list,
            default=DEFAULT_DEVICES,
            metavar="1,2,4,8",
            help=f"{what} (default: {counts_text(DEFAULT_DEVICES)})",
        )

    p = command(
        "validate",
        "check spec files for mistakes (no device needed)",
        "Check spec files for every mistake that can be found without a device: the\n"
        "file's layout and field names, case ids, sizes written with n, the mesh and\n"
        "placements, and declared shapes against DTensor's rules. Each problem is\n"
        "printed as FILE:LINE:COLUMN: message. Exit status 0 means no problems, 1 problems.",
    )
    paths(p)
    devices(p, "device counts to check every case at, comma-separated")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default): one line per problem; json: one JSON document",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="read every file afresh, and keep nothing (by default, files read and checked "
        "before are taken from pytest's cache folder, .pytest_cache, as pytest does)",
    )
    p.set_defaults(run=cmd_validate)

    p = command(
        "list",
        "show which cases run, skip or have errors at each device count",
        "A table per spec file: each case, the engine, and at each device count whether\n"
        "it runs (xN: N tests, one per requires_grad value), is expected to fail (xfail),\n"
        "is skipped (with the reason) or has an error (`shardspec validate` says which).",
    )
    paths(p)
    devices(p, "device counts to show, comma-separated")
    p.add_argument(
        "--engines",
        type=engine_list,
        default=DEFAULT_ENGINES,
        metavar="xla,native",
        help="engines to show, comma-separated (default: xla)",
    )
    p.set_defaults(run=cmd_list)

    p = command(
        "explain",
        "show which device holds which piece of a case's tensor",
        "Show DTensor's layout for one case at one device count: the mesh, each device's\n"
        "place in the mesh, the shape of its piece and where the piece starts, and for\n"
        "1-D and 2-D tensors a picture of which device holds which block. For a module\n"
        "case, the placements each parameter gets from the shard rules.",
    )
    p.add_argument(
        "target",
        metavar="FILE::ID",
        help="the spec file and the case id, such as specs/distribute_tensor.yaml::shard_1d",
    )
    p.add_argument(
        "--devices",
        type=device_count,
        default=None,
        metavar="N",
        help="the device count (default: 4, or the n in a test id such as ...[xla-n8-grad])",
    )
    p.set_defaults(run=cmd_explain)

    p = command(
        "fill",
        "write the expected shapes into cases that lack them",
        "For each tensor case without expect.global_shape or expect.local_shape, write\n"
        "them as DTensor's rules give them; the rest of the file is left as it is\n"
        "(comments, order, layout). global_shape copies input.shape as written (n and\n"
        "all); local_shape is written only where it can hold at every device count the\n"
        "case runs at. Cases expecting an error, module cases and cases that already\n"
        "declare both are left alone. With --sharding-spec, also write sharding_spec:\n"
        "torch_xla's sharding string for the layout, predicted without a device, as a\n"
        "map from device count to string.",
    )
    paths(p)
    devices(p, "device counts the written shapes must hold at, comma-separated")
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit with status 1 if a file would change, naming the cases",
    )
    p.add_argument(
        "--engine",
        choices=("native", "xla"),
        default=None,
        help="for step cases (v1.1): run this engine (native: DTensor itself on the CPU) and "
        "write each value's shape, placements and local_shape as it observed them",
    )
    p.add_argument(
        "--sharding-spec",
        action="store_true",
        help="also write expect.sharding_spec: the XLA sharding string for DTensor's layout, "
        "as a map by device count (every case checks it unasked; this pins it in the file)",
    )
    p.set_defaults(run=cmd_fill)

    p = command(
        "new",
        "start a new spec file from a commented example",
        "Write specs/NAME.yaml: a commented example with one tensor case and one module\n"
        "case, ready to validate and run. An existing file is never overwritten.",
    )
    p.add_argument("name", metavar="NAME", help="the new file's name, such as my_cases")
    p.add_argument("--folder", default="specs", help="the folder to write it in (default: specs)")
    p.set_defaults(run=cmd_new)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 fine, 1 problems, 2 usage)."""
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as exc:
        print(f"shardspec {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shardspec list | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
