"""The pytest plugin: spec files become test items that run on XLA in worker processes.

Nothing here imports torch: items send plain requests to workers (runner.executor)
and judge the plain observations that come back (runner.check).
"""

from __future__ import annotations

import gc
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from . import cache, coverage, disagree, report, summary
from .check import check, failed_checks
from .executor import Pool, WorkerFault
from .expand import DEFAULT_MAX_ELEMENTS, Variant, parse_device_counts
from .problems import Problem
from .spec import DEFAULT_ENGINES, SUFFIXES, parse_engines
from .verdict import verdict

DEFAULT_DEVICES = (4,)
DEFAULT_TIMEOUT = 120.0
FILE_ITEM = "file"


def _skip_reason(report: pytest.TestReport) -> str:
    """A skip's reason, as -rs shows it (without pytest's "Skipped: ")."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple | list) and len(longrepr) == 3 else longrepr
    return str(reason).removeprefix("Skipped: ")


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
        engines = config.getoption("shardspec_engines")
        try:
            self.engines = parse_engines(engines) if engines else DEFAULT_ENGINES
        except ValueError as exc:
            raise pytest.UsageError(f"--engines {exc}") from None
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
        self._store: cache.Store | None = None
        self._prefetched = False
        self._counts: tuple[int, ...] | None = None
        self._marker_names: frozenset[str] | None = None
        self._strict: bool | None = None  # --strict-markers (or its ini options)
        self.cases: dict[str, set[str]] = defaultdict(set)  # file -> case ids found
        self.items: dict[str, str] = {}  # nodeid -> file, for the selected items
        self.outcomes: dict[str, str] = {}  # nodeid -> one outcome (a failure wins)
        # The reports' side of the ledger, filled from the reports themselves (so under
        # xdist too): each item's record (coverage.record), its time, its skip reason.
        self.records: dict[str, dict[str, Any]] = {}
        self._collected: dict[str, pytest.Item] = {}  # nodeid -> item, until read
        self._gc_was_on: bool | None = None  # while collection pauses the collector
        self.durations: dict[str, float] = defaultdict(float)
        self.skips: dict[str, str] = {}
        self.ran: set[str] = set()  # items whose test body ran (checks were made or not)
        self.strict_xpass: set[str] = set()
        report_path = config.getoption("shardspec_report")
        if report_path and Path(report_path).suffix.lower() not in (".md", ".html", ".htm"):
            raise pytest.UsageError(
                f"--shardspec-report {report_path}: the file must end in .md (Markdown) or .html"
            )
        self.report_path = (config.invocation_params.dir / report_path) if report_path else None

    def store(self) -> cache.Store:
        """Expanded spec files kept under pytest's cache dir (off with -p no:cacheprovider)."""
        if self._store is None:
            pytest_cache = getattr(self.config, "cache", None)
            self._store = cache.Store(pytest_cache.mkdir(cache.NAME) if pytest_cache else None)
        return self._store

    def prefetch(self, keys: list[cache.Key]) -> None:
        """Once a session, when the first spec file is collected: the spec files this run
        collects are read and expanded ahead, one process per core (runner.cache)."""
        if self._prefetched:
            return
        self._prefetched = True
        if hasattr(self.config, "workerinput"):
            return  # under xdist, the workers already share the cores
        here = self.config.invocation_params.dir
        norecurse = self.config.getini("norecursedirs")
        paths = cache.spec_paths(self.config.args, here, self.wants, norecurse)
        files = [(path, os.path.relpath(path, here)) for path in paths]
        self.store().prefetch(files, keys, self.max_elements)

    def marker_names(self) -> frozenset[str]:
        """The registered marker names (read once a session)."""
        if self._marker_names is None:
            self._marker_names = marker_names(self.config)
        return self._marker_names

    def registered_marks(self) -> frozenset[str] | None:
        """The registered marker names when pytest runs with --strict-markers, else None."""
        if self._strict is None:
            self._strict = _strict_markers(self.config)
        return self.marker_names() if self._strict else None

    def device_counts(self) -> tuple[int, ...]:
        """The counts to run: --devices, or the runtime's own count when PJRT_DEVICE is set."""
        if self._counts is None:
            if self.user_pjrt and self.config.option.collectonly:
                # Collecting must not start torch_xla (6.5 s, and a TPU may be busy): name
                # the count the runtime would report when it can be read off the environment.
                self._counts = self._counts_without_runtime()
            elif self.user_pjrt:
                worker = self.pool.worker("xla", 0)
                count = int(worker.info["devices"])
                self.pool.workers[("xla", count)] = self.pool.workers.pop(("xla", 0))
                self._counts = (count,)
            else:
                self._counts = self.requested
        return self._counts

    def _counts_without_runtime(self) -> tuple[int, ...]:
        """--devices if given; else CPU_NUM_DEVICES for PJRT_DEVICE=CPU; else the default."""
        if self.config.getoption("shardspec_devices"):
            return self.requested
        cpu = os.environ.get("CPU_NUM_DEVICES", "")
        if os.environ.get("PJRT_DEVICE", "").upper() == "CPU" and cpu.isdigit() and int(cpu) > 0:
            return (int(cpu),)
        return self.requested

    # -- hooks: Run is registered as a plugin, so the ledger lives with the session --

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            if isinstance(item, CaseItem | ProblemItem):
                self.items[item.nodeid] = item.parent.nodeid
                # Read when the session ends, and only for items that never reported.
                self._collected[item.nodeid] = item
        if self._store is not None:
            self._store.close()  # files read ahead but not collected (-k does not matter)
        # Everything collected lives for the session: the collector need not walk it
        # again (a large suite has millions of objects, and pytest collects at exit).
        self.resume_gc(freeze=bool(self._collected))

    def pause_gc(self) -> None:
        """From the first spec file to the end of collection, the cyclic collector rests:
        the objects made all stay alive, and walking them again and again costs more
        than making them (runner.cache.no_gc)."""
        if self._gc_was_on is None:
            self._gc_was_on = gc.isenabled()
            gc.disable()

    def resume_gc(self, freeze: bool = False) -> None:
        if self._gc_was_on is None:
            return
        if freeze:
            gc.freeze()
        if self._gc_was_on:
            gc.enable()
        self._gc_was_on = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        if isinstance(item, CaseItem):
            item.ensure_record()  # before any report of the item: the record travels with it

    def _records_from_collection(self) -> None:
        """The records of collected items, in collection order (a report's record wins)."""
        if not self._collected:
            return
        merged: dict[str, dict[str, Any]] = {}
        for nodeid, item in self._collected.items():
            rec = self.records.get(nodeid)
            if rec is None:
                if isinstance(item, CaseItem):
                    item.ensure_record()
                rec = coverage.record_in(item.user_properties)
            if rec is not None:
                merged[nodeid] = rec
        merged.update(self.records)
        self.records = merged
        self._collected = {}

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # The xdist controller collects nothing: the workers tell it what they selected.
        for nodeid in ids:
            file = nodeid.split("::")[0]
            if Path(file).suffix in SUFFIXES:
                self.items[nodeid] = file

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        rec = coverage.record_in(report.user_properties)
        if rec is not None:  # the latest: a run may add checks it could not make
            self.records[nodeid] = rec
        self.durations[nodeid] += report.duration
        # One outcome per item (setup, call and teardown reports fold; a failure wins).
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.failed and report.when != "call":
            outcome = "error"
        elif report.skipped:
            self.skips[nodeid] = _skip_reason(report)
        if report.when == "call":
            self.ran.add(nodeid)
            if report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
                self.strict_xpass.add(nodeid)
        counts = report.when == "call" or outcome != "passed"
        if counts and self.outcomes.get(nodeid) not in ("failed", "error"):
            self.outcomes[nodeid] = outcome

    def missing(self) -> list[str]:
        if self.config.option.collectonly:
            return []
        return [nodeid for nodeid in self.items if nodeid not in self.outcomes]

    def shardspec_nodeids(self) -> list[str]:
        """The items of spec files that reported or were selected (not other tests)."""
        seen = dict.fromkeys([*self.items, *self.outcomes])
        return [n for n in seen if n in self.records or Path(n.split("::")[0]).suffix in SUFFIXES]

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.resume_gc()  # if collection stopped before its end
        if exitstatus == pytest.ExitCode.OK and self.missing():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.report_path is not None and not hasattr(self.config, "workerinput"):
            # One code path with and without xdist: the records came with the reports
            # (or, for items that never reported, from collection).
            self._records_from_collection()
            matrix = coverage.Matrix()
            for nodeid, rec in self.records.items():
                outcome = self.outcomes.get(nodeid, "not run")
                matrix.add(rec, "xpassed strict" if nodeid in self.strict_xpass else outcome)
            matrix.write(self.report_path)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if hasattr(self.config, "workerinput"):
            return
        tr = terminalreporter
        if self.report_path is not None:
            tr.write_line(f"shardspec: coverage report written to {self.report_path}")
        if self.config.option.collectonly:
            return
        self._records_from_collection()
        cases = self.cases
        if not cases:  # the xdist controller collects nothing: read cases off the reports
            cases = defaultdict(set)
            for nodeid in self.shardspec_nodeids():
                rec = self.records.get(nodeid)
                if rec is not None:
                    cases[rec["file"]].add(rec["case"])
                else:
                    cases[nodeid.split("::")[0]].add(nodeid.partition("::")[2].split("[")[0])
        if not cases:
            return
        ran = [n for n in self.ran if n in self.records and not self.records[n]["broken"]]
        notes = summary.unchecked(self.records, ran)
        if notes:
            tr.section("shardspec: checks not made", sep="-")
            for line in notes:
                tr.line(line)
        elif ran:
            tr.write_line("shardspec: every check was made")
        if len(self.engines) > 1:
            tr.section("shardspec: engines disagree", sep="-")
            lines = disagree.disagreements(self.records.values())
            for line in lines:
                tr.line(line)
            if not lines:
                tr.line("the engines agree on every case that ran on several of them")
        others = [n for n in self.shardspec_nodeids() if n not in self.records]
        results = summary.results(self.records, self.outcomes, self.durations, others)
        if results:
            tr.section("shardspec: results per device count", sep="-")
            for line in results:
                tr.line(line)
            reasons = summary.skip_reasons(self.records, self.skips)
            if reasons:
                tr.line("skip reasons (count, reason, cases):")
                for line in reasons:
                    tr.line(line)
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
        "--engines",
        dest="shardspec_engines",
        default=None,
        help="engines to run every spec on, comma-separated (default: xla): xla is torch_xla "
        "SPMD on the CPU; native is DTensor itself on the CPU (n ranks in one process)",
    )
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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``-n``, the tests of one engine x device count go to one xdist worker, so that
    each (engine, n) worker subprocess is started once per run (runner.scheduler)."""
    from .scheduler import make_scheduler

    return make_scheduler(config, log)


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
        keys = [(engine, n) for engine in run.engines for n in run.device_counts()]
        run.prefetch(keys)
        run.pause_gc()  # until the end of collection
        plan, source = run.store().plan(self.path, shown, keys, run.max_elements)
        yield from self._items(run, plan, source)

    def _items(self, run: Run, plan: cache.Plan, source: cache.Source):
        ledger = run.cases.setdefault(self.nodeid, set())  # listed even with no case
        if plan.problems:
            yield ProblemItem.from_parent(self, name=FILE_ITEM, problems=plan.problems)
        for index, (case_id, line) in enumerate(plan.cases):
            ledger.add(case_id)
            for engine in run.engines:
                for n in run.device_counts():
                    for planned in plan.variants[(engine, n)][index]:
                        name = f"{case_id}[{planned.name}]"
                        yield CaseItem.from_parent(
                            self,
                            name=name,
                            # Given whole, so that pytest (9.2 parses ids into names and
                            # [params]) reads it as --lf's records do: FILE::CASE[PARAMS].
                            nodeid=f"{self.nodeid}::{name}",
                            planned=planned,
                            key=(engine, n),
                            line=line,
                            source=source,
                            file_problems=plan.problems,
                        )


def _strict_markers(config: pytest.Config) -> bool:
    if getattr(config.option, "strict_markers", False):
        return True
    for name in ("strict_markers", "strict"):  # ini options, in the pytest versions that have them
        try:
            if config.getini(name):
                return True
        except ValueError:
            pass
    return False


def marker_names(config: pytest.Config) -> frozenset[str]:
    """The marker names registered in the pytest configuration."""
    lines = config.getini("markers")
    return frozenset(line.split(":")[0].split("(")[0].strip() for line in lines)


def _mark(item: pytest.Item, name: str) -> pytest.MarkDecorator:
    """``pytest.mark.NAME``; an unregistered name warns at the spec's line, not at ours."""
    registered = item.config.stash[RUN_KEY].marker_names()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        mark = getattr(pytest.mark, name)
    if name not in registered:
        case = item.variant.case  # type: ignore[attr-defined]
        where = case.locate(("marks",))
        item.warn(
            pytest.PytestUnknownMarkWarning(
                f"{case.doc.path}:{where.line}: unknown mark '{name}' in case '{case.id}': a "
                "typo? Register it under markers in the pytest configuration "
                "(--strict-markers makes this an error)"
            )
        )
    return mark


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
    """One case at one engine, device count and grad flag.

    Collection gives it only its plan (name, line, verdict, marks): its variant (what it
    sends to the worker and checks) is read back from the file's cached pickle when it
    runs, so a large suite collects in about the memory pytest's own items take.
    """

    def __init__(
        self,
        *,
        planned: cache.Planned,
        key: cache.Key,
        line: int,
        source: cache.Source,
        file_problems: list[Problem],
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self._planned = planned
        self._key = key
        self._line = line
        self._source = source
        self.file_problems = file_problems
        self._recorded = False  # the record is made when the item runs (ensure_record)
        self.verdict = planned.verdict
        registered = self.config.stash[RUN_KEY].registered_marks()
        if registered is not None and any(m not in registered for m in planned.marks):
            self.verdict = verdict(self.variant, file_problems, registered)
        if self.verdict.kind == "error":
            return  # a broken case fails: no skip, xfail or mark may hide it
        case_id = self.name.partition("[")[0]
        if self.verdict.kind == "skip":
            # pytest folds skip marks per file in -rs, so the reason names the case.
            self.add_marker(pytest.mark.skip(reason=f"{case_id}: {self.verdict.reason}"))
        xfail = self.verdict.xfail
        if xfail is not None:
            # raises=CaseFailed: a broken spec, a dead worker, or a failure of checks that
            # the xfail does not name is never an "expected" failure.
            self.add_marker(
                pytest.mark.xfail(reason=xfail.reason, strict=xfail.strict, raises=CaseFailed)
            )
        for name in planned.marks:
            if name.isidentifier():
                self.add_marker(_mark(self, name))

    @property
    def variant(self) -> Variant:
        """The case at this engine, device count and grad flag (read back when needed)."""
        return self._source.variant(self._planned, self._key)

    def runtest(self) -> None:
        run = self.config.stash[RUN_KEY]
        variant = self.variant
        if self.verdict.file_broken:
            raise ShardspecFailure(
                f"not run: its spec file has errors (see {self.path.name}::{FILE_ITEM}):\n"
                + report.problems(self.verdict.problems)
            )
        if self.verdict.kind == "error":
            raise ShardspecFailure(report.problems(self.verdict.problems))
        timeout = float(variant.description.get("timeout") or run.timeout)
        request = dict(
            variant.request or {},
            case=f"{variant.case.doc.path}::{variant.case.id}",
            n=variant.n,
            # The native engine gives up on its ranks first, so that a hung rank fails only
            # its case and the worker goes on (the pool's timeout would restart it).
            timeout=timeout * 0.8,
        )
        try:
            reply = run.pool.run(variant.engine, variant.n, request, timeout)
        except WorkerFault as fault:
            raise ShardspecFailure(report.fault(variant, str(fault), fault.tail)) from None
        failures = check(variant, reply.observation)
        # The checker may have found checks it could not make; the digest feeds the
        # "engines disagree" report.
        self._refresh_record(disagree.digest(variant, reply.observation))
        if not failures:
            return
        if any(f.check == "reference_error" for f in failures):
            # The spec is wrong: never an expected failure, whatever its xfail says.
            raise ShardspecFailure(report.failures(variant, failures))
        text = report.failures(variant, failures)
        xfail = self.verdict.xfail
        if xfail is not None and not xfail.holds_for(failed_checks(failures)):
            raise ShardspecFailure(report.unexpected(xfail.checks or (), failures) + "\n\n" + text)
        raise CaseFailed(text)

    def ensure_record(self) -> None:
        """The item's record (coverage.record) in its user_properties: made once, when it
        runs or, for one that never runs, when the session ends."""
        if not self._recorded:
            self._recorded = True
            self.user_properties.append(
                coverage.record(self.variant, self.nodeid, broken=bool(self.file_problems))
            )

    def _refresh_record(self, digest: dict | None = None) -> None:
        self.ensure_record()
        fresh = coverage.record(
            self.variant, self.nodeid, broken=bool(self.file_problems), digest=digest
        )
        self.user_properties[:] = [
            fresh if isinstance(p, tuple) and p[:1] == (fresh[0],) else p
            for p in self.user_properties
        ]

    def reportinfo(self):
        return self.path, self._line - 1, self.name
