"""The safe, strict, line-tracked YAML loader (runner.yamlload), through load_text/load_file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner import yamlload
from runner.problems import Mark, SpecError
from runner.yamlload import load_file, load_text


@pytest.fixture(params=["c", "python"])
def loader(request, monkeypatch):
    """Run a test with the C parser (when PyYAML has it) and with the pure-Python one."""
    if request.param == "python":
        monkeypatch.setattr(yamlload, "_Loader", yaml.SafeLoader)
    elif not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML was built without libyaml")
    return request.param


def refuse(text: str | bytes, **limits: int):
    """The single problem load_text reports for ``text``."""
    with pytest.raises(SpecError) as info:
        load_text(text, "spec.yaml", **limits)
    [problem] = info.value.problems
    assert str(problem).startswith(f"spec.yaml:{problem.mark.line}:{problem.mark.col}: ")
    return problem


def test_uses_the_c_loader_when_available():
    if hasattr(yaml, "CSafeLoader"):
        assert yamlload._Loader is yaml.CSafeLoader
    assert issubclass(yamlload._Loader, (yaml.SafeLoader, getattr(yaml, "CSafeLoader", ())))


def test_plain_data_with_the_line_of_every_value_and_key(loader):
    doc = load_text("version: 1\ncases:\n  - id: a\n    mesh: [n, 2]\n", "s.yaml")
    assert doc.data == {"version": 1, "cases": [{"id": "a", "mesh": ["n", 2]}]}
    assert doc.mark(("cases", 0, "mesh", 1)) == Mark(4, 15)
    assert doc.key_mark(("cases", 0, "mesh")) == Mark(4, 5)
    assert doc.mark(("cases", 0)) == Mark(3, 5)
    # A path that is not in the file falls back to its nearest located parent.
    assert doc.mark(("cases", 0, "input", "shape")) == Mark(3, 5)


def test_n_and_other_words_stay_text(loader):
    doc = load_text("a: [n, y, N, Y, null_ish, 'no']\n")
    assert doc.data == {"a": ["n", "y", "N", "Y", "null_ish", "no"]}


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "NO", "On", "OFF"])
def test_yaml11_booleans_are_errors_with_a_hint(loader, word):
    problem = refuse(f"version: 1\nflag: {word}\n")
    assert problem.mark == Mark(2, 7)
    assert f"'{word}' is not a boolean here: write true or false" in problem.message
    assert f'"{word}"' in problem.message  # the quoted form, if the word was meant


def test_true_and_false_are_booleans(loader):
    assert load_text("a: [true, false]\n").data == {"a": [True, False]}


@pytest.mark.parametrize("word", ["True", "FALSE", "Yes", "off"])
def test_only_lowercase_true_false_are_booleans(loader, word):
    with pytest.raises(SpecError) as info:
        load_text(f"a: {word}\n", "f.yaml")
    assert str(info.value).startswith(
        f"f.yaml:1:4: '{word}' is not a boolean here: write true or false"
    )


def test_timestamps_stay_strings(loader):
    doc = load_text("a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2002-12-14 21:59:43\n")
    assert doc.data == {
        "a": "2001-12-14",
        "b": "2001-12-14t21:59:43.10-05:00",
        "c": "2002-12-14 21:59:43",
    }


def test_numbers(loader):
    doc = load_text("a: [1, -1, +5, 0, 1.5, 1.0e-5, .inf, ~, null]\n")
    assert doc.data == {"a": [1, -1, 5, 0, 1.5, 1.0e-5, float("inf"), None, None]}


@pytest.mark.parametrize("text", ["0x10", "1_000", "1:30", "0b101"])
def test_unusual_integer_notations_are_errors(loader, text):
    problem = refuse(f"a: {text}\n")
    assert f"'{text}' is read by YAML as a number in an unusual notation" in problem.message


def test_nan_and_huge_numbers_are_errors(loader):
    assert "(not a number) can't be used here" in refuse("a: .nan\n").message
    # Python refuses to read over 4300 digits: that must be our message, not its ValueError.
    problem = refuse("a: " + "7" * 5000 + "\n")
    assert "a number with 5000 digits is far too large" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, 1),
        ("a: {x: 1, y: 2, x: 3}\n", 1, 1),
        ("cases:\n  - id: a\n    mesh: [n]\n    id: b\n", 4, 2),
        ("'a': 1\na: 2\n", 2, 1),  # quoting doesn't make a different key
    ],
)
def test_duplicate_keys_name_both_lines(loader, text, line, first):
    problem = refuse(text)
    assert problem.mark.line == line
    assert f"(first at line {first}, again at line {line})" in problem.message
    assert "duplicate key" in problem.message


def test_merge_keys_work_and_explicit_keys_win(loader):
    doc = load_text("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n")
    assert doc.data["use"] == {"x": 1, "y": 3}
    doc = load_text("base: &b {x: 1}\nuse: {y: 0, <<: *b, x: 4}\n")
    assert doc.data["use"] == {"y": 0, "x": 4}


def test_each_key_keeps_its_own_line_around_a_merge(loader):
    text = (
        "base: &b\n"  # 1
        "  x: 1\n"  # 2
        "  y: {deep: 1}\n"  # 3
        "  z: 1\n"  # 4
        "use:\n"  # 5
        "  y: 5\n"  # 6: written before the merge; it must not take line 3
        "  <<: *b\n"  # 7
        "  z: 6\n"  # 8
    )
    doc = load_text(text)
    assert doc.data["use"] == {"x": 1, "y": 5, "z": 6}
    assert doc.key_mark(("use", "y")) == Mark(6, 3) and doc.mark(("use", "y")) == Mark(6, 6)
    assert doc.key_mark(("use", "z")) == Mark(8, 3) and doc.mark(("use", "z")) == Mark(8, 6)
    assert doc.mark(("use", "x")) == Mark(2, 6)  # a merged key: where the anchor has it
    # The overridden merged value leaves nothing behind.
    assert not doc.has(("use", "y", "deep"))


def test_merged_keys_come_in_the_order_yaml_loaders_use(loader):
    # The order matters: a module's layers run in the order of their keys.
    text = (
        "a: &a {p: 1, q: 1}\nb: &b {r: 2}\n"
        "one:\n  s: 0\n  <<: [*a, *b]\n"
        "two: {t: 0, <<: *b, q: 3}\n"
    )
    doc = load_text(text)
    for key in ("one", "two"):
        assert list(doc.data[key].items()) == list(yaml.safe_load(text)[key].items())
    assert doc.mark(("one", "r")) == Mark(2, 11)


def test_a_key_in_two_merged_maps_is_an_error(loader):
    # Which one wins differs between YAML loaders (and PyYAML versions): be stricter.
    problem = refuse("a: &a {p: 1, q: 1}\nb: &b {q: 2}\nuse:\n  <<: [*a, *b]\n")
    assert problem.mark == Mark(4, 3)
    assert "'q' is in more than one of the maps merged here with '<<' (lines 1 and 2)" in (
        problem.message
    )
    # Set in the map itself, it wins everywhere: fine.
    doc = load_text("a: &a {p: 1, q: 1}\nb: &b {q: 2}\nuse:\n  <<: [*a, *b]\n  q: 3\n")
    assert doc.data["use"] == {"p": 1, "q": 3}


def test_two_merge_keys_in_one_map_are_duplicates(loader):
    problem = refuse("a: &a {p: 1}\nb: &b {q: 2}\nuse:\n  <<: *a\n  <<: *b\n")
    assert problem.mark == Mark(5, 3)
    assert "duplicate key '<<' (first at line 4, again at line 5)" in problem.message
    assert "<<: [*a, *b]" in problem.message


def test_merge_of_a_non_map_is_an_error(loader):
    assert "'<<' must be followed by a map" in refuse("a: {<<: [1]}\n").message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a: !!python/object/apply:os.system ['true']\n", "!!python/object/apply:os.system"),
        ("a: !!python/name:os.system\n", "!!python/name:os.system"),
        ("a: !!python/object:runner.spec.Case {}\n", "!!python/object:runner.spec.Case"),
        ("a: !!binary aGVsbG8=\n", "!!binary"),
        ("a: !!set {x, y}\n", "!!set"),
        ("a: !include other.yaml\n", "!include"),
        ("!!python/object/new:dict {}\n", "!!python/object/new:dict"),
    ],
)
def test_tags_are_refused_never_run(loader, text, shown):
    problem = refuse(text)
    assert f"YAML tags like '{shown}' are not allowed in spec files" in problem.message


def test_a_key_must_be_text(loader):
    assert "a key must be a plain word" in refuse("? !!python/tuple [1, 2]\n: x\n").message
    assert "a key must be a plain word" in refuse("{[1]: x}\n").message
    assert "are not allowed" in refuse("!!python/name:os.system : x\n").message


def test_explicit_standard_tags_are_fine(loader):
    assert load_text("a: !!str 5\nb: !!int '7'\n").data == {"a": "5", "b": 7}


def test_a_call_split_by_a_flow_map_is_an_error_at_its_line(loader):
    # Every YAML reader cuts the call at its comma: fc1 gets 'Linear(128' and '64)' becomes
    # a key with no value. shardspec reads it the same way and says what to write instead.
    text = (
        "version: 1\ncases:\n  - id: mlp\n"
        "    module: {fc1: Linear(128, 64), relu: ReLU(), fc2: Linear(64, 1, bias=false)}\n"
    )
    assert yaml.safe_load(text)["cases"][0]["module"]["fc1"] == "Linear(128"
    problem = refuse(text)
    assert problem.mark == Mark(4, 19)
    assert problem.message.startswith("YAML cuts 'Linear(128, 64)' in two at its comma")
    assert "Write the layers in block style, one per line" in problem.message
    assert "'fc1: Linear(128, 64)' on a line of its own" in problem.message
    assert 'put the value in quotes: {fc1: "Linear(128, 64)"}' in problem.message
    assert "\n" not in problem.message


def test_a_split_call_is_found_before_its_pieces_look_like_duplicate_keys(loader):
    # '4)' twice would otherwise be reported as a duplicate key, which explains nothing.
    problem = refuse("a: {fc1: Linear(8, 4), fc2: Linear(8, 4)}\n")
    assert problem.mark == Mark(1, 10)
    assert "YAML cuts 'Linear(8, 4)' in two" in problem.message
    assert "Write this map in block style" in problem.message  # not under module: generic words


@pytest.mark.parametrize(
    "text",
    [
        "module:\n  fc1: Linear(128, 64)\n  relu: ReLU()\n  fc2: Linear(64, 1, bias=false)\n",
        "module: {fc1: \"Linear(128, 64)\", relu: ReLU(), fc2: 'Linear(64, 1, bias=false)'}\n",
        "module: {relu: ReLU(), norm: LayerNorm(8)}\n",  # no comma inside a call: fine
    ],
)
def test_block_style_or_quoted_calls_mean_the_same_everywhere(loader, text):
    doc = load_text(text)
    assert doc.data == yaml.safe_load(text)
    assert all(layer.count("(") == layer.count(")") == 1 for layer in doc.data["module"].values())


def test_an_unclosed_call_without_a_comma_is_left_to_the_layer_parser(loader):
    # Nothing was cut off, so it is not a split: the layer grammar reports it later.
    assert load_text("module: {fc1: Linear(8}\n").data == {"module": {"fc1": "Linear(8"}}


def test_alias_bomb_hits_the_value_cap(loader):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    problem = refuse("\n".join(lines) + "\n")
    assert f"more than {yamlload.MAX_NODES} values (too many aliases?)" in problem.message


def test_aliases_of_long_text_hit_the_text_cap(loader):
    text = "s: &s '" + "x" * 50_000 + "'\nl: [" + ", ".join(["*s"] * 60) + "]\n"
    problem = refuse(text)
    assert f"more than {yamlload.MAX_CHARS} characters of text" in problem.message


def test_caps_can_be_lowered(loader):
    assert "more than 3 values" in refuse("a: [1, 2, 3]\n", max_nodes=3).message
    assert "nested more than 2 levels" in refuse("a: [[[1]]]\n", max_depth=2).message
    assert "over the 10-byte limit" in refuse("a: 12345678901\n", max_bytes=10).message


def test_deep_nesting_is_capped(loader):
    problem = refuse("a: " + "[" * 80 + "]" * 80 + "\n")
    assert problem.mark.line == 1
    assert f"nested more than {yamlload.MAX_DEPTH} levels deep" in problem.message


def test_very_deep_nesting_never_overflows_the_stack(loader):
    problem = refuse("a: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert "nested" in problem.message or "deep" in problem.message


def test_an_alias_loop_is_an_error(loader):
    assert "refers to its own anchor (a loop)" in refuse("a: &x [1, *x]\n").message


def test_a_duplicate_anchor_names_both_lines(loader):
    problem = refuse("a: &x 1\nb: &x 2\n")
    assert problem.mark.line == 2
    assert "the anchor &x is defined twice (first at line 1, again at line 2)" in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "--- ~\n"])
def test_an_empty_file_is_one_problem(loader, text):
    problem = refuse(text)
    assert problem.mark == Mark(1, 1)
    assert "the file is empty" in problem.message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: 1\n\tb: 2\n", 2, "a tab character is used for indentation"),
        ("a:\n\tb: 1\n", 2, "a tab character is used for indentation"),
        ("a: b: c\n", 1, "put text containing ': ' in quotes"),
        ("a: 1\n---\nb: 2\n", 2, "more than one YAML document"),
        ("a: *nowhere\n", 1, "refers to an anchor (&name) that is not defined"),
        ("a: 'open\n", 2, "a quote or bracket is opened but never closed"),
    ],
)
def test_syntax_errors_are_located_and_explained(loader, text, line, words):
    problem = refuse(text)
    assert problem.mark.line == line
    assert problem.message.startswith("this is not valid YAML")
    assert words in problem.message


@pytest.mark.parametrize(
    ("text", "at", "words"),
    [
        ("a: [1, 2\nb: [3]\n", Mark(1, 4), "a '[' list is not closed with ']'"),
        ("a: [1, 2\n", Mark(1, 4), "a '[' list is not closed with ']'"),
        ("a:\n  - [1, 2\n  - 3\n", Mark(2, 5), "a '[' list is not closed with ']'"),
        ("a: {x: 1\nb: 2\n", Mark(1, 4), "a '{' map is not closed with '}'"),
        ("a: {x: [1, 2}\nb: 1\n", Mark(1, 8), "a '[' list is not closed with ']'"),
        ("a: [1, {x: 2]\n", Mark(1, 8), "a '{' map is not closed with '}'"),
    ],
)
def test_an_unclosed_bracket_is_reported_where_it_opens(loader, text, at, words):
    # The parser only notices at the next line (or the end); the '[' or '{' is what to fix.
    problem = refuse(text)
    assert problem.mark == at
    assert problem.message.startswith(f"this is not valid YAML: {words}")
    assert "YAML gave up at" in problem.message


def test_control_characters_are_located(loader):
    problem = refuse("a: 1\nb: caf\u00e9\x07\n")
    assert problem.mark == Mark(2, 8)
    assert "the control character U+0007" in problem.message


def test_invalid_utf8_is_located():
    problem = refuse(b"a: 1\nb: caf\xe9\n")
    assert problem.mark.line == 2
    assert "not valid UTF-8" in problem.message


def test_messages_stay_one_short_line():
    problem = refuse("a: 1\n'" + "k" * 5000 + "\\nx': 2\n'" + "k" * 5000 + "\\nx': 3\n")
    assert "\n" not in problem.message
    assert len(problem.message) < 300


def test_load_file_checks_the_size_before_reading(tmp_path: Path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" * 100)

    def never(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(Path, "read_bytes", never)
    with pytest.raises(SpecError) as info:
        load_file(path, "big.yaml", max_bytes=100)
    assert "500 bytes, over the 100-byte limit" in str(info.value)


def test_load_file_names_the_display_path(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text("version: 1\nversion: 2\n")
    with pytest.raises(SpecError) as info:
        load_file(path, "specs/spec.yaml")
    assert str(info.value).startswith("specs/spec.yaml:2:1: duplicate key 'version'")


def test_load_file_of_a_missing_file_is_a_problem(tmp_path: Path):
    with pytest.raises(SpecError) as info:
        load_file(tmp_path / "gone.yaml", "gone.yaml")
    assert str(info.value).startswith("gone.yaml:1:1: cannot read the file")
