"""Expanded spec files, kept between runs under pytest's cache directory.

Reading a spec file (load, validate, split into cases) and expanding its cases for each
engine and device count gives plain dataclasses. They are pickled into one entry per file
under ``<cache_dir>/d/shardspec/`` (pytest's own cache directory, so ``--cache-clear``
empties it and ``-p no:cacheprovider`` turns it off), and the next collection unpickles
them instead of reading the file again. ``shardspec validate`` reads and writes the same
entries.

An entry is served only when everything that could change its content is the same:

- the file's bytes (read on every collection: a changed file is never served stale);
- the schema's bytes, the runner's version and its source files (size and mtime of every
  ``runner/*.py``, so an edited checkout never serves what the old code expanded), the
  Python version and the entry format;
- the path shown in messages, and ``--shardspec-max-elements``;
- the engines and device counts: an entry holds the variants of each (engine, n) it was
  asked for, and a collection that needs another (engine, n) expands only those and
  writes the entry back with them added.

A damaged, unreadable or foreign entry is ignored and written again. Writes go to a
temporary file that replaces the entry in one step, so concurrent processes (pytest-xdist
workers) never see half an entry.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gc
import hashlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import re
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import __version__, schema
from .expand import DEFAULT_MAX_ELEMENTS, Variant, expand
from .problems import Problem, SpecError
from .spec import SUFFIXES, SpecFile, read, split
from .verdict import Verdict, verdict
from .yamlload import MAX_BYTES, load_text

FORMAT = 2  # bump when the entry's layout changes
NAME = "shardspec"  # pytest's Cache.mkdir(NAME): <cache_dir>/d/shardspec
DEFAULT_CACHE_DIR = ".pytest_cache"  # pytest's default cache_dir

Key = tuple[str, int]  # (engine, device count)


@dataclass
class Expanded:
    """A spec file read, and its cases' variants for each (engine, n) asked for."""

    spec: SpecFile
    # (engine, n) -> one list per case (in file order) of that case's variants there
    variants: dict[Key, list[list[Variant]]]

    def of(self, index: int, engine: str, n: int) -> list[Variant]:
        return self.variants[(engine, n)][index]


@functools.cache
def code_fingerprint() -> str:
    """What identifies the code that made an entry: version, sources, schema, Python."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}|{__version__}|{sys.version}|".encode())
    # What reads the files is part of it too: a PyYAML or schema validator upgrade may load
    # or judge the same bytes differently (yamlload.py notes one such change). An install
    # rewrites a package's files, so their size and mtime tell (importlib.metadata would
    # cost the collection 5 MiB of imports, measured).
    for module in ("yaml", "_yaml", "jsonschema", "jsonschema_rs"):
        found = importlib.util.find_spec(module)
        origin = found.origin if found is not None else None
        try:
            info = os.stat(origin) if origin else None
        except OSError:
            info = None
        seen = f"{origin}:{info.st_size}:{info.st_mtime_ns}" if info is not None else "none"
        digest.update(f"{module}={seen}|".encode())
    here = Path(__file__).resolve().parent
    for source in sorted(here.glob("*.py")):
        info = source.stat()
        digest.update(f"{source.name}:{info.st_size}:{info.st_mtime_ns}|".encode())
    digest.update(schema.schema_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a file's many small objects are made.

    Loading and expanding (or unpickling) allocates hundreds of thousands of objects that
    all stay alive; the collector would walk them again and again (measured: it triples the
    time of a 1,000-case file). Nothing here makes cycles that need collecting.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


HEADER = b"shardspec-cache "  # an entry: this, a JSON line, the Plan's pickle, the Expanded's


@dataclass(slots=True)
class Planned:
    """What collecting needs of one variant. The variant itself stays pickled (in its
    file's :class:`Source`) until its test runs, so a collected case costs about what a
    pytest item costs."""

    case: int  # the case's index in the file
    index: int  # the variant's index among its case's variants at its (engine, n)
    name: str  # the variant's name, e.g. "xla-n4-grad"
    verdict: Verdict  # without --strict-markers' problems (the plugin adds those)
    marks: tuple[str, ...]  # the case's marks as written (the plugin checks them)


@dataclass
class Plan:
    """A spec file as collection sees it: its problems, its cases (id and line), and the
    name and verdict of each variant at each (engine, n) asked for."""

    problems: list[Problem]
    cases: list[tuple[str, int]]
    variants: dict[Key, list[list[Planned]]]


def plan_of(found: Expanded) -> Plan:
    """The Plan of an expanded file (equal verdicts share one object: most are "run")."""
    problems = found.spec.problems
    shared: dict[tuple, Verdict] = {}
    marks_of = []
    for case in found.spec.cases:
        marks = case.data.get("marks")
        marks_of.append(
            tuple(m for m in marks if isinstance(m, str)) if isinstance(marks, list) else ()
        )
    variants: dict[Key, list[list[Planned]]] = {}
    for key, per_case in found.variants.items():
        rows = variants[key] = []
        for case_index, of_case in enumerate(per_case):
            row = []
            for index, variant in enumerate(of_case):
                judged = verdict(variant, problems)
                if not judged.problems:
                    judged = shared.setdefault(
                        (judged.kind, judged.reason, judged.xfail, judged.file_broken), judged
                    )
                row.append(Planned(case_index, index, variant.name, judged, marks_of[case_index]))
            rows.append(row)
    cases = [(case.id, case.mark.line) for case in found.spec.cases]
    return Plan(list(problems), cases, variants)


class Source:
    """One file's Expanded, for the items collected from it: kept as its pickle and
    unpickled when a test first asks for its variant. Tests run file by file, so only the
    last :attr:`KEEP` files stay unpickled; the rest are bytes again."""

    KEEP = 2
    _recent: ClassVar[deque[Source]] = deque()

    def __init__(
        self,
        payload: bytes | None = None,
        expanded: Expanded | None = None,
        again: Callable[[], Expanded] | None = None,
    ):
        self._payload = payload
        self._expanded = expanded
        self._again = again  # reads the file again if the pickle can't be read

    def variant(self, planned: Planned, key: Key) -> Variant:
        return self.expanded().of(planned.case, *key)[planned.index]

    def expanded(self) -> Expanded:
        found = self._expanded
        if found is not None:
            return found
        with no_gc():
            found = _unpickled(self._payload)
            if found is None and self._again is not None:
                found = self._again()
        if found is None:
            raise RuntimeError("shardspec: a cached spec file could not be read back")
        self._expanded = found
        recent = Source._recent
        recent.append(self)
        while len(recent) > self.KEEP:
            recent.popleft()._expanded = None
        return found


class SpecChanged(RuntimeError):
    """A spec file changed between collecting its tests and running them."""


@dataclass
class _Got:
    """A file as the cache found or made it."""

    content_key: str | None
    found: Expanded | None = None  # made (or unpickled) here
    plan: bytes | None = None  # the Plan's pickle, as the entry holds it
    payload: bytes | None = None  # the Expanded's pickle, likewise


def _unpickled(payload: bytes | None) -> Expanded | None:
    if payload is None:
        return None
    try:
        found = pickle.loads(payload)
    except Exception:  # damaged, or from other code
        return None
    return found if isinstance(found, Expanded) else None


class Store:
    """The entries of one cache directory (None: caching is off), and the files being
    read ahead in other processes (:meth:`prefetch`)."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self._prefetch: Prefetch | None = None

    def _entry(self, path: Path, shown: str, max_elements: int) -> Path | None:
        if self.directory is None:
            return None
        name = hashlib.sha256(f"{path.resolve()}|{shown}|{max_elements}".encode()).hexdigest()
        return self.directory / f"{name[:32]}.pickle"

    @staticmethod
    def _raw(path: Path) -> bytes | None:
        """The file's bytes; None when unreadable or over the cap (read() words that)."""
        try:
            return path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
        except OSError:
            return None

    @staticmethod
    def content_key(raw: bytes, shown: str, max_elements: int) -> str:
        content = hashlib.sha256()
        content.update(f"{code_fingerprint()}|{shown}|{max_elements}|".encode())
        content.update(raw)
        return content.hexdigest()

    @staticmethod
    def _read(entry: Path, content_key: str, header_only: bool = False):
        """(its (engine, n) keys, the Plan's pickle, the Expanded's pickle) when ``entry``
        is for this content; (None, None, None) when it is missing, damaged or for other
        content or code."""
        try:
            with open(entry, "rb") as handle:
                line = handle.readline()
                if not line.startswith(HEADER):
                    return None, None, None
                header = json.loads(line[len(HEADER) :])
                if header.get("key") != content_key:
                    return None, None, None
                keys = {(str(e), int(n)) for e, n in header["variants"]}
                if header_only:
                    return keys, None, None
                plan = handle.read(int(header["plan"]))
                return keys, plan, handle.read()
        except (OSError, ValueError, KeyError, TypeError):
            return None, None, None

    def save(self, entry: Path, content_key: str, expanded: Expanded) -> tuple[bytes, bytes]:
        """Write the entry (in one step: a temporary file, renamed); its two pickles."""
        plan = pickle.dumps(plan_of(expanded), protocol=pickle.HIGHEST_PROTOCOL)
        payload = _pickled(expanded)
        header = json.dumps(
            {"key": content_key, "variants": sorted(expanded.variants), "plan": len(plan)}
        )
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".pickle")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(HEADER + header.encode() + b"\n")
                    handle.write(plan)
                    handle.write(payload)
                os.replace(tmp, entry)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            pass  # a cache that can't be written only costs time
        return plan, payload

    def fresh(self, path: Path, shown: str, keys: Iterable[Key], max_elements: int) -> bool:
        """Whether the entry serves this file at every (engine, n) (reads its header only)."""
        raw, entry = self._raw(path), self._entry(path, shown, max_elements)
        if raw is None or entry is None:
            return False
        key = self.content_key(raw, shown, max_elements)
        have, _, _ = self._read(entry, key, header_only=True)
        return have is not None and set(keys) <= have

    def _ahead(
        self, path: Path, shown: str, max_elements: int
    ) -> tuple[str, tuple[bytes, bytes]] | None:
        """The content key and the (Plan, Expanded) pickles another process made of this
        file, if it read it ahead and the file has not changed since."""
        ahead = self._prefetch.take(path, shown) if self._prefetch is not None else None
        if ahead is None:
            return None
        raw = self._raw(path)
        if raw is None or ahead[0] != self.content_key(raw, shown, max_elements):
            return None
        return ahead

    def expanded(
        self,
        path: Path,
        shown: str,
        keys: Iterable[Key],
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> Expanded:
        """The file read and its variants at every (engine, n) of ``keys``: read ahead by
        another process, or from the cache when the entry matches, else computed (and
        stored)."""
        wanted = list(dict.fromkeys(keys))
        with no_gc():
            ahead = self._ahead(path, shown, max_elements)
            if ahead is not None:
                found = _unpickled(ahead[1][1])
                if found is not None and set(wanted) <= set(found.variants):
                    return found
            got = self._get(path, shown, wanted, max_elements, need_found=True)
            assert got.found is not None
            return got.found

    def plan(
        self,
        path: Path,
        shown: str,
        keys: Iterable[Key],
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> tuple[Plan, Source]:
        """What pytest collects of the file (its Plan) and where its variants are kept
        until they run (its Source): read ahead, from the cache, or computed (and stored).
        """
        wanted = list(dict.fromkeys(keys))

        def again(content_key: str | None) -> Callable[[], Expanded]:
            return functools.partial(self._again, path, shown, wanted, max_elements, content_key)

        with no_gc():
            ahead = self._ahead(path, shown, max_elements)
            if ahead is not None:
                content_key, (plan_bytes, payload) = ahead
                plan = pickle.loads(plan_bytes)
                if set(wanted) <= set(plan.variants):
                    return plan, Source(payload, again=again(content_key))
            got = self._get(path, shown, wanted, max_elements, need_found=False)
            if got.payload is None or got.plan is None:
                assert got.found is not None
                return plan_of(got.found), Source(expanded=got.found)
            return pickle.loads(got.plan), Source(got.payload, again=again(got.content_key))

    def _again(
        self, path: Path, shown: str, wanted: list[Key], max_elements: int, collected: str | None
    ) -> Expanded:
        """The file read again when a test runs and its cached pickle can't be read back,
        as long as the file is still what was collected."""
        raw = self._raw(path)
        if raw is None or self.content_key(raw, shown, max_elements) != collected:
            raise SpecChanged(f"{shown} changed after its tests were collected: run pytest again")
        found = self._get(path, shown, wanted, max_elements, need_found=True).found
        assert found is not None
        return found

    def _get(
        self, path: Path, shown: str, wanted: list[Key], max_elements: int, need_found: bool
    ) -> _Got:
        """The file from its entry when it serves every (engine, n) wanted (unpickled only
        if ``need_found``), else read and expanded here, and the entry written."""
        raw = self._raw(path)
        if raw is None:
            return _Got(None, _expand(read(path, shown), wanted, max_elements))
        content_key = self.content_key(raw, shown, max_elements)
        entry = self._entry(path, shown, max_elements)
        if entry is None:
            return _Got(content_key, _expand(_read_bytes(raw, shown), wanted, max_elements))
        have, plan, payload = self._read(entry, content_key)
        if have is not None:
            if not need_found and set(wanted) <= have:
                return _Got(content_key, None, plan, payload)  # unpickled when it runs
            found = _unpickled(payload)
            if found is not None:
                missing = [key for key in wanted if key not in found.variants]
                if not missing:
                    return _Got(content_key, found, plan, payload)
                found.variants.update(_expand(found.spec, missing, max_elements).variants)
                return _Got(content_key, found, *self.save(entry, content_key, found))
        found = _expand(_read_bytes(raw, shown), wanted, max_elements)
        return _Got(content_key, found, *self.save(entry, content_key, found))

    # -- reading ahead in other processes --

    def prefetch(
        self,
        files: list[tuple[Path, str]],
        keys: Iterable[Key],
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        *,
        then: Callable[[Expanded], Any] | None = None,
        all_files: bool = False,
    ) -> Prefetch | None:
        """Start reading and expanding ``files`` in forked processes, one per core, so that
        :meth:`plan` and :meth:`expanded` (or :meth:`Prefetch.take`) later find them done.
        Files whose entry is fresh are left to those unless ``all_files``. ``then`` runs on
        each file's Expanded in its process, and its result is what ``take`` gives."""
        wanted = list(dict.fromkeys(keys))
        self.close()
        if len(files) < 2 or _processes() < 2:
            return None  # nothing to gain: don't read every file's entry for nothing
        jobs = [
            (path, shown)
            for path, shown in files
            if all_files or not self.fresh(path, shown, wanted, max_elements)
        ]
        self._prefetch = Prefetch.start(self.directory, jobs, wanted, max_elements, then)
        return self._prefetch

    def close(self) -> None:
        """Stop reading ahead (what is running ends by itself; what waits is dropped)."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None


PROCESSES_ENV = "SHARDSPEC_PROCESSES"  # how many processes read ahead (1: none); default: cores


def _pickled(found: Expanded) -> bytes:
    return pickle.dumps(found, protocol=pickle.HIGHEST_PROTOCOL)


def _compute(
    directory: Path | None,
    path: Path,
    shown: str,
    wanted: list[Key],
    max_elements: int,
    then: Callable[[Expanded], Any] | None,
) -> tuple[str | None, Any]:
    """In a read-ahead process: one file, expanded (and its entry written); the result of
    ``then``, or the (Plan, Expanded) pickles."""
    with no_gc():
        got = Store(directory)._get(path, shown, wanted, max_elements, need_found=then is not None)
        if then is not None:
            return got.content_key, then(got.found)
        if got.payload is None or got.plan is None:
            assert got.found is not None
            plan = pickle.dumps(plan_of(got.found), protocol=pickle.HIGHEST_PROTOCOL)
            return got.content_key, (plan, _pickled(got.found))
        return got.content_key, (got.plan, got.payload)


class Prefetch:
    """Files being read and expanded in forked processes (a process pool, one per core)."""

    def __init__(self, pool: Any, futures: dict[tuple[str, str], Any]):
        self.pool = pool
        self.futures = futures

    @classmethod
    def start(
        cls,
        directory: Path | None,
        jobs: list[tuple[Path, str]],
        wanted: list[Key],
        max_elements: int,
        then: Callable[[Expanded], Any] | None,
    ) -> Prefetch | None:
        processes = _processes()
        if len(jobs) < 2 or processes < 2:
            return None  # one file, or one core: reading it here is as fast
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context)
        futures = {
            (os.path.abspath(path), shown): pool.submit(
                _compute, directory, path, shown, wanted, max_elements, then
            )
            for path, shown in jobs
        }
        return cls(pool, futures)

    def take(self, path: Path, shown: str) -> tuple[str | None, Any] | None:
        """What the process made of this file (waits for it); None if it was not read
        ahead or its process failed (then the caller reads it itself)."""
        future = self.futures.pop((os.path.abspath(path), shown), None)
        if future is None:
            return None
        try:
            return future.result()
        except Exception:
            return None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.futures.clear()


def _processes() -> int:
    """Processes to read ahead with: the cores, unless SHARDSPEC_PROCESSES says otherwise;
    1 where forking is not safe (no fork, or threads are running)."""
    if not hasattr(os, "fork") or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if threading.active_count() > 1:
        return 1  # a fork copies one thread: another one's locks could stay held
    configured = os.environ.get(PROCESSES_ENV, "")
    if configured.isdigit():
        return max(1, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _read_bytes(raw: bytes, shown: str) -> SpecFile:
    """runner.spec.read for bytes already read (the same problems, the same cases)."""
    try:
        doc = load_text(raw, shown)
    except SpecError as exc:
        return SpecFile(shown, None, [], exc.problems)
    return split(doc)


def _expand(spec: SpecFile, keys: list[Key], max_elements: int) -> Expanded:
    variants = {
        (engine, n): [expand(case, engine, n, max_elements=max_elements) for case in spec.cases]
        for engine, n in keys
    }
    return Expanded(spec, variants)


def spec_paths(
    args: Iterable[str],
    here: Path,
    wants: Callable[[Path], bool],
    norecursedirs: Iterable[str] = (),
) -> list[Path]:
    """The spec files pytest will collect for ``args`` (as far as can be told before it
    does: folders walked as pytest walks them, hidden folders, ``norecursedirs`` and
    virtualenvs left out), for reading ahead. A file named here that pytest then does not
    collect only costs a process some time; one missing here is read as it is collected."""
    skip = list(norecursedirs)
    found: dict[Path, None] = {}
    for arg in args:
        if arg.startswith("-"):
            continue
        path = Path(os.path.abspath(here / arg.split("::")[0]))
        if path.is_file():
            if wants(path):
                found.setdefault(path, None)
            continue
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".")
                and not any(fnmatch.fnmatch(d, pattern) for pattern in skip)
                and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
            )
            for name in sorted(names):
                candidate = Path(folder, name)
                if candidate.suffix in SUFFIXES and wants(candidate):
                    found.setdefault(candidate, None)
    return list(found)


# --- where the cache lives, for the shardspec command (pytest's own rules, simplified) ---

# pytest 9's configuration files, in its order, and the tables that make each one pytest's
# (None: the file counts as it is).
_CONFIG_FILES: dict[str, tuple[str, ...] | None] = {
    "pytest.toml": ("[pytest]",),
    ".pytest.toml": ("[pytest]",),
    "pytest.ini": None,
    ".pytest.ini": None,
    "pyproject.toml": ("[tool.pytest.ini_options]", "[tool.pytest]"),
    "tox.ini": ("[pytest]",),
    "setup.cfg": ("[tool:pytest]",),
}
_CACHE_DIR = re.compile(r"""^\s*cache_dir\s*=\s*["']?([^"'\n#]+?)["']?\s*$""", re.MULTILINE)


def _ini_text(folder: Path) -> tuple[Path, str] | None:
    """The first pytest configuration in ``folder`` that pytest would use, and its text."""
    for name, sections in _CONFIG_FILES.items():
        candidate = folder / name
        if not candidate.is_file():
            continue
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if sections is None:
            return candidate, text
        for section in sections:
            start = text.find(section)
            if start >= 0:
                end = text.find("\n[", start + len(section))
                return candidate, text[start : end if end >= 0 else len(text)]
    return None


def pytest_cache_dir(paths: Iterable[Path]) -> Path:
    """The folder where pytest run on ``paths`` keeps its cache (``d/shardspec`` inside).

    As pytest 9 finds its rootdir: the nearest folder, from the common ancestor of the
    paths upwards, whose pytest.toml or .pytest.toml ([pytest]), pytest.ini, .pytest.ini,
    pyproject.toml ([tool.pytest] or [tool.pytest.ini_options]), tox.ini ([pytest]) or
    setup.cfg ([tool:pytest]) configures pytest; its ``cache_dir`` if set, else
    ``.pytest_cache`` there. Without one, the nearest folder with a pyproject.toml, else
    the common ancestor. (``--rootdir``, ``-c`` and ``-o cache_dir`` are pytest's options,
    which the shardspec command does not see.)
    """
    resolved = [p.resolve() for p in paths] or [Path.cwd()]
    common = Path(os.path.commonpath([str(p) for p in resolved]))
    if common.is_file():
        common = common.parent
    pyproject: Path | None = None
    for folder in (common, *common.parents):
        found = _ini_text(folder)
        if found is not None:
            match = _CACHE_DIR.search(found[1])
            cache_dir = match.group(1).strip() if match else DEFAULT_CACHE_DIR
            return (folder / os.path.expandvars(cache_dir)).resolve()
        if pyproject is None and (folder / "pyproject.toml").is_file():
            pyproject = folder
    return (pyproject or common) / DEFAULT_CACHE_DIR


def command_store(paths: Iterable[Path], enabled: bool = True) -> Store:
    """The cache the ``shardspec`` command shares with pytest run on the same files."""
    if not enabled:
        return Store(None)
    return Store(pytest_cache_dir(paths) / "d" / NAME)
