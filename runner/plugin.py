"""The pytest plugin: spec files become test items that run on XLA in worker processes.

Nothing here imports torch: items send plain requests to workers (runner.executor)
and judge the plain observations that come back (runner.check).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from . import report
from .check import check
from .coverage import Matrix
from .executor import Pool, WorkerFault
from .expand import DEFAULT_MAX_ELEMENTS, Variant, expand, parse_device_counts
from .problems import Problem
from .spec import ENGINES, SUFFIXES, Case, read

DEFAULT_DEVICES = (4,)
DEFAULT_TIMEOUT = 120.0
FILE_ITEM = "file"
_ITEM_NAME = re.compile(r"^(?P<id>[^\[]+)\[(?P<engine>[a-z]+)-n(?P<n>[0-9]+)(-(no)?grad)?\]$")


class ShardspecFailure(Exception):
    """A failure whose text is complete for the user: shown without a traceback."""


class CaseFailed(ShardspecFailure):
    """The engine ran the case and an expectation did not hold (what xfail may expect)."""


def parse_devices(text: str) -> tuple[int, ...]:
    try:
        return parse_device_counts(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--devices {exc}") from None


class Run:
    """Session-wide state: options, the worker pool and the ledger."""

    def __init__(self, config: pytest.Config):
        self.config = config
        raw = config.getoption("shardspec_devices")
        self.user_pjrt = "PJRT_DEVICE" in os.environ
        self.requested = parse_devices(raw) if raw else DEFAULT_DEVICES
        self.timeout = config.getoption("shardspec_timeout") or DEFAULT_TIMEOUT
        self.max_elements = config.getoption("shardspec_max_elements") or DEFAULT_MAX_ELEMENTS
        root = config.rootpath
        self.spec_roots = [
            (root / p).resolve() for p in (config.getini("shardspec_paths") or ["specs"])
        ]
        here = config.invocation_params.dir
        self.explicit = {
            (here / arg.split("::")[0]).resolve() for arg in config.args if not arg.startswith("-")
        }
        self.pool = Pool()
        self._counts: tuple[int, ...] | None = None
        self.cases: dict[str, set[str]] = defaultdict(set)  # file -> case ids found
        self.items: dict[str, str] = {}  # nodeid -> file, for the selected items
        self.outcomes: dict[str, str] = {}
        self.unchecked: list[tuple[str, str]] = []
        self.variants: dict[str, Variant] = {}
        report_path = config.getoption("shardspec_report")
        if report_path and Path(report_path).suffix.lower() not in (".md", ".html", ".htm"):
            raise pytest.UsageError(
                f"--shardspec-report {report_path}: the file must end in .md (Markdown) or .html"
            )
        self.report_path = (config.invocation_params.dir / report_path) if report_path else None

    def device_counts(self) -> tuple[int, ...]:
        """The counts to run: --devices, or the runtime's own count when PJRT_DEVICE is set."""
        if self._counts is None:
            if self.user_pjrt:
                worker = self.pool.worker("xla", 0)
                count = int(worker.info["devices"])
                self.pool.workers[("xla", count)] = self.pool.workers.pop(("xla", 0))
                self._counts = (count,)
            else:
                self._counts = self.requested
        return self._counts

    # -- hooks: Run is registered as a plugin, so the ledger lives with the session --

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if isinstance(item, CaseItem | ProblemItem):
                self.items[item.nodeid] = item.parent.nodeid
            if isinstance(item, CaseItem):
                self.variants[item.nodeid] = item.variant

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # One outcome per item (setup, call and teardown reports fold; a failure wins).
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        counts = report.when == "call" or outcome != "passed"
        if counts and self.outcomes.get(report.nodeid) != "failed":
            self.outcomes[report.nodeid] = outcome

    def missing(self) -> list[str]:
        if self.config.option.collectonly:
            return []
        return [nodeid for nodeid in self.items if nodeid not in self.outcomes]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.OK and self.missing():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.report_path is not None and not hasattr(self.config, "workerinput"):
            # Under xdist the controller collected nothing: rebuild the variants (cheap,
            # no torch) from the node ids of the reports it received.
            variants = self.variants or self._variants_of(self.outcomes)
            matrix = Matrix()
            for nodeid, variant in variants.items():
                matrix.add(variant, self.outcomes.get(nodeid, "not run"))
            matrix.write(self.report_path)

    def _variants_of(self, nodeids) -> dict[str, Variant]:
        found: dict[str, Variant] = {}
        specs: dict[str, list[Case]] = {}
        for nodeid in nodeids:
            file, _, name = nodeid.partition("::")
            if Path(file).suffix not in SUFFIXES or "[" not in name:
                continue
            if file not in specs:
                path = self.config.rootpath / file
                specs[file] = read(path, file).cases if path.is_file() else []
            match = _ITEM_NAME.match(name)
            if not match:
                continue
            case_id, engine, n = match["id"], match["engine"], int(match["n"])
            for case in specs[file]:
                if case.id == case_id:
                    for variant in _expand(case, engine, n, self.max_elements):
                        if f"{case_id}[{variant.name}]" == name:
                            found[nodeid] = variant
        return found

    def pytest_terminal_summary(self, terminalreporter) -> None:
        cases = self.cases
        if not cases:  # the xdist controller collects nothing: read cases off the reports
            cases = defaultdict(set)
            for nodeid in self.outcomes:
                file, _, name = nodeid.partition("::")
                if Path(file).suffix in SUFFIXES:
                    cases[file].add(name.split("[")[0])
        if not cases or self.config.option.collectonly:
            return
        tr = terminalreporter
        if self.unchecked:
            tr.section("shardspec: checks not made", sep="-")
            for nodeid, note in self.unchecked:
                tr.line(f"{nodeid}: {note}")
        per_file: dict[str, Counter] = defaultdict(Counter)
        for nodeid, outcome in self.outcomes.items():
            per_file[nodeid.split("::")[0]][outcome] += 1
        missing = self.missing()
        for nodeid in missing:
            per_file[self.items[nodeid]]["with no outcome"] += 1
        # Files whose tests were all deselected (-k, -m, --lf) are left out.
        selected = set(self.items.values()) | set(per_file)
        tr.section("shardspec: cases per spec file", sep="-")
        for file in sorted(f for f in cases if f in selected):
            counts = ", ".join(f"{count} {name}" for name, count in sorted(per_file[file].items()))
            found = len(cases[file] - {FILE_ITEM})
            tr.line(f"{file}: {found} case(s) found; tests: {counts or 'none run'}")
        if missing:
            tr.line(f"{len(missing)} selected test(s) ended with no outcome", red=True)

    def wants(self, path: Path) -> bool:
        if path.suffix not in SUFFIXES:
            return False
        resolved = path.resolve()
        if resolved in self.explicit:
            return True
        return any(resolved.is_relative_to(root) for root in self.spec_roots)


RUN_KEY = pytest.StashKey[Run]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shardspec", "shardspec: YAML sharding specs run on XLA")
    group.addoption(
        "--devices",
        dest="shardspec_devices",
        default=None,
        help="device counts to run every spec at, comma-separated (default: 4), e.g. 1,2,4,8",
    )
    group.addoption(
        "--shardspec-timeout",
        dest="shardspec_timeout",
        type=float,
        default=None,
        help=f"seconds a case may take on the device (default: {DEFAULT_TIMEOUT:g}); "
        "a case's own timeout: wins",
    )
    group.addoption(
        "--shardspec-max-elements",
        dest="shardspec_max_elements",
        type=int,
        default=None,
        help=f"largest input a case may ask for, in elements (default: {DEFAULT_MAX_ELEMENTS})",
    )
    group.addoption(
        "--shardspec-report",
        dest="shardspec_report",
        default=None,
        metavar="PATH",
        help="write a coverage matrix (placements x mesh rank x even/uneven x dtype, outcomes "
        "per device count): Markdown for .md, HTML for .html",
    )
    parser.addini(
        "shardspec_paths",
        type="linelist",
        default=["specs"],
        help="folders (relative to the rootdir, or absolute) whose *.yaml files are specs",
    )


def pytest_configure(config: pytest.Config) -> None:
    run = Run(config)
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, "shardspec-run")
    config.add_cleanup(run.pool.close)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if parent.config.stash[RUN_KEY].wants(file_path):
        return SpecFile.from_parent(parent, path=file_path)
    return None


class SpecFile(pytest.File):
    """A spec file: one item per case, engine, device count and grad flag."""

    def collect(self):
        run = self.config.stash[RUN_KEY]
        # Messages name the file as seen from where pytest was started (clickable there).
        shown = os.path.relpath(self.path, self.config.invocation_params.dir)
        spec = read(self.path, shown)
        ledger = run.cases.setdefault(self.nodeid, set())  # listed even with no case
        if spec.problems:
            yield ProblemItem.from_parent(self, name=FILE_ITEM, problems=spec.problems)
        for case in spec.cases:
            ledger.add(case.id)
            for engine in ENGINES:
                for n in run.device_counts():
                    for variant in _expand(case, engine, n, run.max_elements):
                        yield CaseItem.from_parent(
                            self,
                            name=f"{case.id}[{variant.name}]",
                            variant=variant,
                            file_problems=spec.problems,
                        )


def _expand(case: Case, engine: str, n: int, max_elements: int) -> list[Variant]:
    try:
        return expand(case, engine, n, max_elements=max_elements)
    except Exception as exc:
        variant = Variant(case, engine, n, None)
        variant.problems = [
            case.problem(
                (),
                f"shardspec could not expand this case ({type(exc).__name__}: {exc}); please report it",
            )
        ]
        return [variant]


class SpecItem(pytest.Item):
    """Base of shardspec's items: their failures are complete messages, not tracebacks."""

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ShardspecFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class ProblemItem(SpecItem):
    """A spec file that can't be used as a whole: one failing test that says why."""

    def __init__(self, *, problems: list[Problem], **kwargs: Any):
        super().__init__(**kwargs)
        self.problems = problems

    def runtest(self) -> None:
        raise ShardspecFailure(report.problems(self.problems))

    def reportinfo(self):
        first = self.problems[0].mark.line if self.problems else 1
        return self.path, first - 1, f"{self.path.name}: spec file errors"


class CaseItem(SpecItem):
    """One case at one engine, device count and grad flag."""

    def __init__(self, *, variant: Variant, file_problems: list[Problem], **kwargs: Any):
        super().__init__(**kwargs)
        self.variant = variant
        self.file_problems = file_problems
        data = variant.case.data
        if variant.problems or file_problems:
            return  # a broken case fails: no skip, xfail or mark may hide it
        # pytest folds skip marks per file in -rs, so the reason names the case.
        if variant.skip:
            self.add_marker(pytest.mark.skip(reason=f"{variant.case.id}: {variant.skip}"))
        elif isinstance(data.get("skip"), str):
            self.add_marker(pytest.mark.skip(reason=f"{variant.case.id}: {data['skip']}"))
        xfail = data.get("xfail")
        if isinstance(xfail, dict) and isinstance(xfail.get("reason"), str):
            # raises=CaseFailed: a broken spec or a dead worker is never an "expected" failure.
            self.add_marker(
                pytest.mark.xfail(
                    reason=xfail["reason"],
                    strict=xfail.get("strict", True) is not False,
                    raises=CaseFailed,
                )
            )
        for name in data.get("marks") or []:
            if isinstance(name, str) and name.isidentifier():
                self.config.addinivalue_line("markers", f"{name}: declared in spec files")
                self.add_marker(getattr(pytest.mark, name))

    def runtest(self) -> None:
        run = self.config.stash[RUN_KEY]
        variant = self.variant
        if self.file_problems:
            raise ShardspecFailure(
                f"not run: its spec file has errors (see {self.path.name}::{FILE_ITEM}):\n"
                + report.problems(self.file_problems)
            )
        if variant.problems:
            raise ShardspecFailure(report.problems(variant.problems))
        for note in variant.unchecked:
            run.unchecked.append((self.nodeid, note))
        request = dict(
            variant.request or {}, case=f"{variant.case.doc.path}::{variant.case.id}", n=variant.n
        )
        timeout = float(variant.description.get("timeout") or run.timeout)
        try:
            reply = run.pool.run(variant.engine, variant.n, request, timeout)
        except WorkerFault as fault:
            raise ShardspecFailure(report.fault(variant, str(fault), fault.tail)) from None
        failures = check(variant, reply.observation)
        if failures:
            raise CaseFailed(report.failures(variant, failures))

    def reportinfo(self):
        return (
            self.path,
            self.variant.case.mark.line - 1,
            f"{self.variant.case.id}[{self.variant.name}]",
        )
