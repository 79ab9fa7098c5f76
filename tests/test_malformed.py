"""The malformed-spec corpus: every mistake ends in one plain message at the right line.

Each file in tests/malformed/ says in its header what must be reported, e.g.
``# expect: 7: unknown key 'mesch'`` and, if it matters, ``# devices: 3``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _corpus import CORPUS, assert_plain, corpus, expected, problems_of_file

from runner import yamlload
from runner.spec import read

FILES = corpus()


def test_the_corpus_is_big_enough():
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_malformed_file_is_reported_at_its_line(path: Path):
    want = expected(path)
    shown = f"tests/malformed/{path.name}"
    found = problems_of_file(path, shown, want.devices)
    assert found, f"{path.name}: no problem reported"
    for problem in found:
        assert_plain(problem, shown)
    hits = [p for p in found if p.mark.line == want.line and want.fragment in p.message]
    assert hits, (
        f"{path.name}: expected line {want.line} with {want.fragment!r}; got:\n"
        + "\n".join(map(str, found))
    )


def test_oversized_file_is_refused_before_parsing(tmp_path: Path):
    # Valid YAML, just too big: the size alone must stop it, before any parse or repr.
    path = tmp_path / "huge.yaml"
    filler = "# " + "x" * 100 + "\n"
    path.write_text("version: 1\n" + filler * (yamlload.MAX_BYTES // len(filler) + 1))
    spec = read(path, "huge.yaml")
    assert spec.cases == []
    [problem] = spec.problems
    assert_plain(problem, "huge.yaml")
    assert problem.mark.line == 1
    assert f"over the {yamlload.MAX_BYTES}-byte limit" in problem.message


def test_python_tags_never_run(tmp_path: Path):
    marker = tmp_path / "ran"
    text = (
        "version: 1\n"
        f"description: !!python/object/apply:os.system ['touch {marker}']\n"
        f"cases: !!python/object/apply:subprocess.call [['touch', '{marker}']]\n"
    )
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    spec = read(path, "evil.yaml")
    assert not marker.exists()
    [problem] = spec.problems
    assert problem.mark.line == 2
    assert "YAML tags like '!!python/object/apply:os.system' are not allowed" in problem.message


def test_a_broken_file_leaves_the_others_alone():
    broken = read(CORPUS / "syntax_unclosed_bracket.yaml", "broken.yaml")
    good = read(Path(__file__).parent.parent / "specs" / "distribute_tensor.yaml", "good.yaml")
    assert broken.problems and not broken.cases
    assert not good.problems and good.cases
