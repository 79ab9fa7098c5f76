"""The collection cache (runner.cache): what it keeps, when it is served, and where it lives."""

from __future__ import annotations

import json
import os
import pickle
import textwrap
import threading
from pathlib import Path

import pytest

from runner import cache, cli
from runner.cache import Store

CASE = """\
version: 1
cases:
  - id: rows
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [2*n, 3]}
    expect: {local_shape: [2, 3]}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pickle")) if folder.is_dir() else []


def stored(entry: Path) -> tuple[dict, cache.Expanded]:
    """An entry's header (its key and (engine, n) keys) and its Expanded."""
    header, _, rest = entry.read_bytes().partition(b"\n")
    assert header.startswith(cache.HEADER)
    fields = json.loads(header[len(cache.HEADER) :])
    return fields, pickle.loads(rest[fields["plan"] :])


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files the cache really read (not served from an entry)."""
    calls: list[str] = []
    from_bytes, from_path = cache._read_bytes, cache.read

    def spy_bytes(raw: bytes, shown: str):
        calls.append(shown)
        return from_bytes(raw, shown)

    def spy_path(path: Path, shown: str):
        calls.append(shown)
        return from_path(path, shown)

    monkeypatch.setattr(cache, "_read_bytes", spy_bytes)
    monkeypatch.setattr(cache, "read", spy_path)
    return calls


def test_a_second_read_is_served_from_the_entry(tmp_path: Path, counted: list[str]) -> None:
    spec = write(tmp_path / "specs" / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    first = store.expanded(spec, "specs/a.yaml", [("xla", 4)])
    again = store.expanded(spec, "specs/a.yaml", [("xla", 4)])
    assert counted == ["specs/a.yaml"]
    assert len(entries(tmp_path / "cache")) == 1
    got, want = again.of(0, "xla", 4)[0], first.of(0, "xla", 4)[0]
    assert (got.name, got.request, got.expects, got.layout) == (
        want.name,
        want.request,
        want.expects,
        want.layout,
    )
    assert again.spec.cases[0].mark == first.spec.cases[0].mark
    assert again.spec.doc.mark(("cases", 0, "expect", "local_shape")).line == 7


def test_a_changed_file_is_never_served_stale(tmp_path: Path, counted: list[str]) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    before = store.expanded(spec, "a.yaml", [("xla", 4)])
    assert before.of(0, "xla", 4)[0].problems == []
    stat = spec.stat()
    # Same size and the same modification time: only the bytes differ.
    spec.write_text(CASE.replace("[2, 3]", "[3, 3]"), encoding="utf-8")
    assert spec.stat().st_size == stat.st_size
    os.utime(spec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = store.expanded(spec, "a.yaml", [("xla", 4)])
    assert counted == ["a.yaml", "a.yaml"]
    [problem] = after.of(0, "xla", 4)[0].problems
    assert "local_shape" in problem.message
    # and the file changed back is read again, not served from the old entry
    spec.write_text(CASE, encoding="utf-8")
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).of(0, "xla", 4)[0].problems == []
    assert len(counted) == 3


def test_other_device_counts_and_engines_are_added_to_the_entry(
    tmp_path: Path, counted: list[str]
) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    store.expanded(spec, "a.yaml", [("xla", 4)])
    both = store.expanded(spec, "a.yaml", [("xla", 2), ("xla", 4), ("native", 4)])
    assert counted == ["a.yaml"]  # the file itself was read once
    assert set(both.variants) == {("xla", 2), ("xla", 4), ("native", 4)}
    assert both.of(0, "xla", 2)[0].request["shape"] == [4, 3]
    assert both.of(0, "native", 4)[0].engine == "native"
    served = store.expanded(spec, "a.yaml", [("native", 4), ("xla", 2)])
    assert counted == ["a.yaml"] and served.of(0, "xla", 2)[0].n == 2
    assert len(entries(tmp_path / "cache")) == 1


@pytest.mark.parametrize(
    "change",
    ["the runner's code", "the shown path", "max elements"],
)
def test_what_else_is_in_the_key(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    store.expanded(spec, "a.yaml", [("xla", 4)])
    shown, limit = "a.yaml", cache.DEFAULT_MAX_ELEMENTS
    if change == "the runner's code":  # a new version, an edited source or schema
        monkeypatch.setattr(cache, "code_fingerprint", lambda: "other code")
    elif change == "the shown path":  # messages name the file as pytest shows it
        shown = "./a.yaml"
    else:
        limit = 16
    found = store.expanded(spec, shown, [("xla", 4)], limit)
    assert len(counted) == 2
    assert found.spec.path == shown
    if change == "max elements":
        assert "over the limit of 16" in found.of(0, "xla", 4)[0].problems[0].message


def test_the_code_fingerprint_covers_sources_schema_and_version() -> None:
    fingerprint = cache.code_fingerprint()
    assert len(fingerprint) == 64 and fingerprint == cache.code_fingerprint()


def test_a_damaged_or_foreign_entry_is_read_again(tmp_path: Path, counted: list[str]) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    store.expanded(spec, "a.yaml", [("xla", 4)])
    [entry] = entries(tmp_path / "cache")
    entry.write_bytes(b"not a pickle")
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).spec.cases[0].id == "rows"
    entry.write_bytes(pickle.dumps(("some key", {"not": "an entry"})))
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).spec.cases[0].id == "rows"
    assert len(counted) == 3
    header = entry.read_bytes().partition(b"\n")[0]
    entry.write_bytes(header + b"\n" + pickle.dumps({"the right key": "but not an entry"}))
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).spec.cases[0].id == "rows"
    entry.write_bytes(header + b"\n" + b"a damaged pickle")
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).spec.cases[0].id == "rows"
    assert len(counted) == 5
    assert store.expanded(spec, "a.yaml", [("xla", 4)]).spec.cases[0].id == "rows"
    assert len(counted) == 5  # written back whole


def damage_variants(entry: Path) -> None:
    """Keep the entry's header and Plan; make its variants' pickle unreadable."""
    header, _, rest = entry.read_bytes().partition(b"\n")
    size = json.loads(header[len(cache.HEADER) :])["plan"]
    entry.write_bytes(header + b"\n" + rest[:size] + b"a damaged pickle")


def test_collection_reads_the_plan_and_leaves_variants_pickled(
    tmp_path: Path, counted: list[str]
) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(tmp_path / "cache")
    plan, source = store.plan(spec, "a.yaml", [("xla", 4)])
    [[planned]] = plan.variants[("xla", 4)]
    assert plan.cases == [("rows", 3)] and plan.problems == []
    assert (planned.name, planned.verdict.kind, planned.marks) == ("xla-n4-nograd", "run", ())
    assert source.variant(planned, ("xla", 4)).request["shape"] == [8, 3]
    assert counted == ["a.yaml"]
    # Served from the entry, the variants' pickle is not read until a variant is asked for:
    # a damaged one is found then, and the file is read again.
    [entry] = entries(tmp_path / "cache")
    damage_variants(entry)
    plan, source = store.plan(spec, "a.yaml", [("xla", 4)])
    assert counted == ["a.yaml"] and plan.cases == [("rows", 3)]
    [[planned]] = plan.variants[("xla", 4)]
    assert source.variant(planned, ("xla", 4)).request["shape"] == [8, 3]
    assert counted == ["a.yaml", "a.yaml"]
    # ... unless the file changed since it was collected: never a variant of other content
    damage_variants(entry)
    plan, source = store.plan(spec, "a.yaml", [("xla", 4)])
    spec.write_text(CASE.replace("[2, 3]", "[3, 3]"), encoding="utf-8")
    with pytest.raises(cache.SpecChanged, match=r"a\.yaml changed after its tests were collected"):
        source.variant(plan.variants[("xla", 4)][0][0], ("xla", 4))


def test_a_plan_names_verdicts_and_marks(tmp_path: Path) -> None:
    text = CASE + textwrap.indent(
        textwrap.dedent("""\
        - id: later
          skip: not yet
          mesh: [n]
          placements: [Replicate()]
          input: {shape: [2, 3]}
        - id: known
          marks: [slow]
          xfail: {reason: torch_xla differs, engines: [xla], checks: [shards]}
          mesh: [n]
          placements: [Replicate()]
          input: {shape: [2, 3]}
        """),
        "  ",
    )
    spec = write(tmp_path / "a.yaml", text)
    plan, source = Store(tmp_path / "cache").plan(spec, "a.yaml", [("xla", 4), ("native", 4)])
    [_, [skipped], [known]] = plan.variants[("xla", 4)]
    assert (skipped.verdict.kind, skipped.verdict.reason) == ("skip", "not yet")
    assert known.verdict.kind == "xfail" and known.verdict.xfail.checks == ("shards",)
    assert known.marks == ("slow",)
    assert plan.variants[("native", 4)][2][0].verdict.kind == "run"  # xfail names xla only
    for key in plan.variants:  # each plan entry stands for its own variant
        for row in plan.variants[key]:
            for planned in row:
                assert source.variant(planned, key).name == planned.name


def test_only_the_last_files_stay_unpickled(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    files = three_files(tmp_path / "specs")
    for path, shown in files:
        store.plan(path, shown, [("xla", 4)])  # stored
    planned = [store.plan(path, shown, [("xla", 4)]) for path, shown in files]
    for _ in range(2):
        for (plan, source), (_, shown) in zip(planned, files, strict=True):
            variant = source.variant(plan.variants[("xla", 4)][0][0], ("xla", 4))
            assert variant.case.id == shown.removesuffix(".yaml")
    held = [source._expanded is not None for _, source in planned]
    assert held == [False] + [True] * cache.Source.KEEP


def test_broken_and_unreadable_files_keep_their_messages(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    bad = write(tmp_path / "bad.yaml", "version: 1\ncases:\n  - id: x\n    mesh: [n\n")
    for _ in range(2):  # computed, then served: the same problem
        [problem] = store.expanded(bad, "bad.yaml", [("xla", 4)]).spec.problems
        assert problem.mark.line == 4 and "not valid YAML" in problem.message
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    [problem] = store.expanded(big, "big.yaml", [("xla", 4)]).spec.problems
    assert "over the 1048576-byte limit" in problem.message
    missing = store.expanded(tmp_path / "gone.yaml", "gone.yaml", [("xla", 4)])
    assert "cannot read the file" in missing.spec.problems[0].message
    assert len(entries(tmp_path / "cache")) == 1  # only the readable file has an entry


def test_no_directory_means_no_cache(tmp_path: Path, counted: list[str]) -> None:
    spec = write(tmp_path / "a.yaml", CASE)
    store = Store(None)
    store.expanded(spec, "a.yaml", [("xla", 4)])
    store.expanded(spec, "a.yaml", [("xla", 4)])
    assert len(counted) == 2


def test_the_collector_is_back_on_after_a_file(tmp_path: Path) -> None:
    import gc

    spec = write(tmp_path / "a.yaml", CASE)
    Store(tmp_path / "cache").expanded(spec, "a.yaml", [("xla", 4)])
    assert gc.isenabled()


# --- where the command keeps it: pytest's cache folder ------------------------------------


def test_the_command_finds_pytests_cache_folder(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pytest.ini_options]\naddopts = '-q'\n")
    write(tmp_path / "specs" / "a.yaml", CASE)
    assert cache.pytest_cache_dir([tmp_path / "specs"]) == tmp_path / ".pytest_cache"
    write(tmp_path / "pytest.ini", "[pytest]\ncache_dir = .custom_cache\n")
    assert cache.pytest_cache_dir([tmp_path / "specs" / "a.yaml"]) == tmp_path / ".custom_cache"
    # a pyproject.toml without pytest's section is not pytest's configuration
    inner = tmp_path / "inner"
    write(inner / "pyproject.toml", "[project]\nname = 'x'\n")
    write(inner / "specs" / "b.yaml", CASE)
    assert cache.pytest_cache_dir([inner / "specs"]) == tmp_path / ".custom_cache"
    # pytest 9's own files come first: pytest.toml, and pyproject.toml's [tool.pytest]
    write(tmp_path / "pytest.toml", '[pytest]\ncache_dir = ".toml_cache"\n')
    assert cache.pytest_cache_dir([tmp_path / "specs"]) == tmp_path / ".toml_cache"
    native = tmp_path / "native"
    write(native / "pyproject.toml", '[tool.pytest]\ncache_dir = "c"\n')
    assert cache.pytest_cache_dir([native]) == native / "c"
    # with no configuration anywhere, the nearest pyproject.toml's folder is the rootdir
    lone = tmp_path / "nowhere" / "proj"
    write(lone / "pyproject.toml", "[project]\nname = 'x'\n")
    write(lone / "specs" / "c.yaml", CASE)
    (tmp_path / "pytest.toml").unlink()
    (tmp_path / "pytest.ini").unlink()
    (tmp_path / "pyproject.toml").unlink()
    assert cache.pytest_cache_dir([lone / "specs"]) == lone / ".pytest_cache"


def test_validate_shares_the_cache_with_pytest(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makeini("[pytest]\n")
    write(pytester.path / "specs" / "a.yaml", CASE)
    folder = pytester.path / ".pytest_cache" / "d" / cache.NAME
    result = pytester.runpytest("--collect-only", "-q", "--devices", "1,2,4,8")
    result.assert_outcomes()
    [entry] = entries(folder)
    written = entry.stat().st_mtime_ns
    os.chdir(pytester.path)
    assert cli.main(["validate", "specs"]) == 0
    assert "1 file, 1 case, checked at n=1, 2, 4, 8: no problems" in capsys.readouterr().out
    assert entries(folder) == [entry] and entry.stat().st_mtime_ns == written  # served
    # validate at another count adds it; pytest then finds it there
    assert cli.main(["validate", "specs", "--devices", "16"]) == 0
    assert entries(folder) == [entry] and entry.stat().st_mtime_ns != written
    header, expanded = stored(entry)
    assert sorted(map(tuple, header["variants"])) == sorted(expanded.variants)
    assert set(expanded.variants) == {("xla", 1), ("xla", 2), ("xla", 4), ("xla", 8), ("xla", 16)}


def test_validate_no_cache_keeps_nothing(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makeini("[pytest]\n")
    write(pytester.path / "specs" / "a.yaml", CASE)
    os.chdir(pytester.path)
    assert cli.main(["validate", "--no-cache"]) == 0
    assert not (pytester.path / ".pytest_cache").exists()
    assert cli.main(["validate"]) == 0
    assert len(entries(pytester.path / ".pytest_cache" / "d" / cache.NAME)) == 1
    capsys.readouterr()


# --- the plugin -----------------------------------------------------------------------------


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_pytest_serves_a_changed_file_fresh(pytester: pytest.Pytester) -> None:
    spec = write(pytester.path / "specs" / "a.yaml", CASE)
    folder = pytester.path / ".pytest_cache" / "d" / cache.NAME
    assert collected(pytester.runpytest("--collect-only", "-q")) == [
        "specs/a.yaml::rows[xla-n4-nograd]"
    ]
    assert len(entries(folder)) == 1
    spec.write_text(CASE.replace("id: rows", "id: cols"), encoding="utf-8")
    assert collected(pytester.runpytest("--collect-only", "-q")) == [
        "specs/a.yaml::cols[xla-n4-nograd]"
    ]
    broken = CASE.replace("placements: [Shard(0)]", "placements: [Shard(x)]")
    spec.write_text(broken, encoding="utf-8")
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert "placements[0]" in result.stdout.str()


def test_a_test_whose_cached_variant_is_damaged_runs_from_its_file(
    pytester: pytest.Pytester,
) -> None:
    write(pytester.path / "specs" / "a.yaml", CASE)
    pytester.runpytest("--collect-only", "-q")
    [entry] = entries(pytester.path / ".pytest_cache" / "d" / cache.NAME)
    damage_variants(entry)  # collection reads the plan only; the run finds the damage
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


def test_cache_clear_and_no_cacheprovider(pytester: pytest.Pytester) -> None:
    write(pytester.path / "specs" / "a.yaml", CASE)
    folder = pytester.path / ".pytest_cache" / "d" / cache.NAME
    pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert not folder.exists()
    pytester.runpytest("--collect-only", "-q")
    [entry] = entries(folder)
    entry.write_bytes(b"stale")
    result = pytester.runpytest("--collect-only", "-q", "--cache-clear")
    assert collected(result) == ["specs/a.yaml::rows[xla-n4-nograd]"]
    [fresh] = entries(folder)
    assert fresh.read_bytes() != b"stale"


def test_options_that_change_items_change_what_is_served(pytester: pytest.Pytester) -> None:
    write(pytester.path / "specs" / "a.yaml", CASE)
    assert collected(pytester.runpytest("--collect-only", "-q", "--devices", "2")) == [
        "specs/a.yaml::rows[xla-n2-nograd]"
    ]
    assert collected(
        pytester.runpytest("--collect-only", "-q", "--devices", "4,2", "--engines", "xla,native")
    ) == [
        "specs/a.yaml::rows[xla-n4-nograd]",
        "specs/a.yaml::rows[xla-n2-nograd]",
        "specs/a.yaml::rows[native-n4-nograd]",
        "specs/a.yaml::rows[native-n2-nograd]",
    ]
    result = pytester.runpytest("--collect-only", "-q", "--shardspec-max-elements", "4")
    assert collected(result) == ["specs/a.yaml::rows[xla-n4-nograd]"]
    result = pytester.runpytest("-q", "--shardspec-max-elements", "4")
    result.assert_outcomes(failed=1)
    assert "over the limit of 4" in result.stdout.str()


# --- reading ahead in other processes -------------------------------------------------------


def three_files(folder: Path) -> list[tuple[Path, str]]:
    return [
        (write(folder / f"{name}.yaml", CASE.replace("id: rows", f"id: {name}")), f"{name}.yaml")
        for name in ("a", "b", "c")
    ]


needs_fork = pytest.mark.skipif(cache._processes() < 2, reason="reading ahead needs fork")


@needs_fork
def test_files_read_ahead_are_served_from_the_other_processes(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.PROCESSES_ENV, "2")
    files = three_files(tmp_path / "specs")
    store = Store(tmp_path / "cache")
    assert store.prefetch(files, [("xla", 4), ("xla", 2)]) is not None
    for path, shown in files:
        found = store.expanded(path, shown, [("xla", 2), ("xla", 4)])
        assert found.spec.cases[0].id == shown.removesuffix(".yaml")
        assert found.of(0, "xla", 2)[0].request["shape"] == [4, 3]
    store.close()
    assert counted == []  # every file was read in another process
    assert len(entries(tmp_path / "cache")) == 3  # which wrote the entries
    # fresh entries are not read ahead again: nothing to start
    assert store.prefetch(files, [("xla", 4)]) is None
    assert store.expanded(*files[0], [("xla", 4)]).spec.cases[0].id == "a"
    assert counted == []


@needs_fork
def test_a_file_changed_after_it_was_read_ahead_is_read_again(
    tmp_path: Path, counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.PROCESSES_ENV, "2")
    files = three_files(tmp_path)
    store = Store(None)  # no cache: what was read ahead comes back through the pool
    for thread in threading.enumerate():  # an earlier test's pool, still winding down
        if type(thread).__name__ == "_ExecutorManagerThread":
            thread.join(timeout=30)
    ahead = store.prefetch(files, [("xla", 4)])
    if ahead is None:
        # Reading ahead forks, so it happens only when no other thread runs; an earlier
        # test in this process may have left one (a worker's stderr reader).
        assert threading.active_count() > 1
        store.close()
        pytest.skip("other threads run in this process, so nothing is read ahead")
    for future in ahead.futures.values():
        future.result()
    path, shown = files[0]
    path.write_text(CASE.replace("id: rows", "id: changed"), encoding="utf-8")
    assert store.expanded(path, shown, [("xla", 4)]).spec.cases[0].id == "changed"
    assert store.expanded(*files[1], [("xla", 4)]).spec.cases[0].id == "b"
    assert counted == ["a.yaml"]
    store.close()


def test_one_process_means_no_reading_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.PROCESSES_ENV, "1")
    assert Store(tmp_path / "cache").prefetch(three_files(tmp_path), [("xla", 4)]) is None


def test_spec_paths_walks_as_pytest_does(tmp_path: Path) -> None:
    for rel in ("specs/a.yaml", "specs/sub/b.yml", "specs/.hidden/c.yaml", "specs/build/d.yaml"):
        write(tmp_path / rel, CASE)
    write(tmp_path / "specs" / "venv" / "pyvenv.cfg", "home = /usr\n")
    write(tmp_path / "specs" / "venv" / "e.yaml", CASE)
    write(tmp_path / "specs" / "notes.txt", "x")
    write(tmp_path / "other" / "f.yaml", CASE)
    found = cache.spec_paths(
        ["specs", "other/f.yaml::rows", "--devices"], tmp_path, lambda p: True, ["build"]
    )
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "specs/a.yaml",
        "specs/sub/b.yml",
        "other/f.yaml",
    ]
