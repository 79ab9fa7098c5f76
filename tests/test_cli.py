"""The ``shardspec`` command line, tested through ``runner.cli.main`` and the installed script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _corpus import corpus, expected

from runner import __version__
from runner.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("shardspec")
MALFORMED = corpus()


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def repo(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project: specs/ and schema/ side by side, as in the repo."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "schema").mkdir()
    (tmp_path / "schema" / "spec.schema.json").write_text(
        (REPO / "schema" / "spec.schema.json").read_text()
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


# --- validate -----------------------------------------------------------------------


def test_validate_specs_is_clean(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "validate")
    assert code == 0, out
    files = len(list((repo / "specs").glob("*.yaml")))
    assert re.fullmatch(
        rf"{files} files, \d+ cases, checked at n=1, 2, 4, 8: no problems\n", out
    ), out


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_validate_locates_every_malformed_file(path: Path, repo: Path, capsys) -> None:
    want = expected(path)
    shown = f"tests/malformed/{path.name}"
    code, out, _ = run(capsys, "validate", shown, "--devices", str(want.devices))
    assert code == 1
    lines = out.splitlines()
    assert lines[-1].endswith("in 1 file"), out
    hits = [
        line
        for line in lines[:-1]
        if line.startswith(f"{shown}:{want.line}:") and want.fragment in line
    ]
    assert hits, out


def test_validate_malformed_folder_at_default_devices(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "validate", "tests/malformed", "--format", "json")
    assert code == 1
    document = json.loads(out)
    assert document["devices"] == [1, 2, 4, 8]
    assert document["counts"]["files"] == len(MALFORMED)
    assert document["counts"]["files_with_problems"] == len(MALFORMED)
    assert document["counts"]["problems"] == len(document["problems"])
    lines = {(p["path"], p["line"]) for p in document["problems"]}
    for path in MALFORMED:
        assert (f"tests/malformed/{path.name}", expected(path).line) in lines, path.name
    for problem in document["problems"]:
        assert set(problem) == {"path", "line", "col", "message", "devices"}
        assert problem["col"] >= 1 and "Traceback" not in problem["message"]


def test_validate_reports_a_problem_once_with_its_device_counts(workdir: Path, capsys) -> None:
    write(
        workdir / "specs" / "odd.yaml",
        "version: 1\ncases:\n  - id: halves\n    mesh: [2, n/2]\n"
        "    placements: [Replicate(), Shard(0)]\n    input: {shape: [n, 3]}\n",
    )
    code, out, _ = run(capsys, "validate", "--devices", "1,2,3,4")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("specs/odd.yaml:4:15: 'n/2' is not a whole number when n=1")
    assert lines[0].endswith("(at n=1, 3; fine at n=2, 4)")
    assert lines[1] == "1 file, 1 case, checked at n=1, 2, 3, 4: 1 problem in 1 file"


def test_validate_json_when_clean(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "validate", "specs/distribute_tensor.yaml", "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert document["problems"] == []
    assert document["counts"] == {
        "files": 1,
        "cases": 3,
        "problems": 0,
        "files_with_problems": 0,
        "warnings": 0,
    }


def test_validate_searches_folders_but_not_hidden_ones(workdir: Path, capsys) -> None:
    (workdir / "specs" / "deep").mkdir()
    (workdir / "specs" / ".hidden").mkdir()
    write(
        workdir / "specs" / "deep" / "a.yml",
        "version: 1\ncases:\n  - {id: a, mesh: [n], placements: [Shard(0)], input: {shape: [n]}}\n",
    )
    write(workdir / "specs" / ".hidden" / "b.yaml", "not: a spec\n")
    write(workdir / "specs" / "notes.txt", "not yaml\n")
    code, out, _ = run(capsys, "validate")
    assert code == 0, out
    assert out == "1 file, 1 case, checked at n=1, 2, 4, 8: no problems\n"


def test_validate_missing_path_is_a_usage_error(repo: Path, capsys) -> None:
    code, out, err = run(capsys, "validate", "specs/no_such.yaml")
    assert code == 2 and out == ""
    assert "no such file or folder: specs/no_such.yaml" in err


def test_validate_missing_default_folder_says_where_to_run(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "validate")
    assert code == 2
    assert "no such file or folder: specs (run shardspec from the folder that holds specs/)" in err


def test_bad_device_list_is_a_usage_error(repo: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--devices", "four"])
    assert exit_info.value.code == 2
    assert "write them separated by commas, such as 1,2,4,8" in capsys.readouterr().err


# --- list ---------------------------------------------------------------------------


def test_list_shows_run_skip_xfail_and_error(workdir: Path, capsys) -> None:
    write(
        workdir / "specs" / "mixed.yaml",
        "version: 1\ncases:\n"
        "  - id: rows\n    requires: {min_devices: 2}\n    mesh: [n]\n    placements: [Shard(0)]\n"
        "    input: {shape: [2*n, 3], requires_grad: [true, false]}\n"
        "  - id: known_bad\n    mesh: [n]\n    placements: [Shard(0)]\n    input: {shape: [n]}\n"
        "    xfail: {reason: not yet}\n"
        "  - id: broken\n    mesh: [n]\n    placements: [Shard(0)]\n    input: {shape: [n/2]}\n"
        "  - id: later\n    skip: waiting for a fix\n    mesh: [n]\n    placements: [Shard(0)]\n"
        "    input: {shape: [n]}\n",
    )
    code, out, _ = run(capsys, "list", "--devices", "1,2")
    assert code == 0
    rows = [line.split("  ") for line in out.splitlines()]
    cells = {
        row[1].strip(): [c.strip() for c in row[2:] if c.strip()] for row in rows if len(row) > 3
    }
    assert cells["case"] == ["engine", "n=1", "n=2"]
    assert cells["rows"] == ["xla", "skip (min_devices: 2)", "run x2"]
    assert cells["known_bad"] == ["xla", "xfail", "xfail"]
    assert cells["broken"] == ["xla", "error (line 16)", "run"]
    assert cells["later"] == ["xla", "skip (waiting for a fix)", "skip (waiting for a fix)"]
    assert out.splitlines()[-1] == (
        "4 cases in 1 file at n=1, 2; tests: 3 run, 2 xfail, 4 skip, 1 error"
    )


def test_list_specs_names_every_file(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for path in sorted((repo / "specs").glob("*.yaml")):
        assert f"specs/{path.name}\n" in out
    assert "same_dim_two_axes" in out and "xfail" in out


# --- explain ------------------------------------------------------------------------


def test_explain_draws_the_seed_2d_case(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "specs/distribute_tensor.yaml::shard_2d_mesh")
    assert code == 0
    assert out.startswith("specs/distribute_tensor.yaml::shard_2d_mesh at n=4: DTensor's layout")
    assert "  input       [6, 3] float32\n" in out
    assert "  mesh        [2, 2]: 4 device(s); axis 0 has 2, axis 1 has 2\n" in out
    table = [line.split() for line in out.splitlines() if re.match(r"  [0-9] ", line)]
    assert [row[:5] for row in table] == [
        ["0", "(0,", "0)", "[3,", "3]"],
        ["1", "(0,", "1)", "[3,", "3]"],
        ["2", "(1,", "0)", "[3,", "3]"],
        ["3", "(1,", "1)", "[3,", "3]"],
    ]
    assert "  1       (0, 1)      [3, 3]       [3, 0]  rows 3-5, cols 0-2\n" in out
    grid = out.split("(one box per block):\n")[1].splitlines()
    assert grid == [
        "               cols 0-2",
        "           +--------------+",
        "  rows 0-2 | devices 0, 2 |",
        "           +--------------+",
        "  rows 3-5 | devices 1, 3 |",
        "           +--------------+",
    ]


def test_explain_uneven_vector_and_empty_pieces(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "specs/uneven.yaml::six_over_four", "--devices", "4")
    assert code == 0
    assert "  3       (3)         [0]          [6]     nothing (an empty piece)\n" in out
    assert "| device 0 | device 1 | device 2 |" in out
    assert "  device 3 holds an empty piece (no box)" in out


def test_explain_2d_tiles(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "specs/uneven.yaml::uneven_2d_mesh_tiles_n4")
    assert code == 0
    assert out.split("(one box per block):\n")[1].splitlines() == [
        "             cols 0-2   cols 3-4",
        "           +----------+----------+",
        "  rows 0-1 | device 0 | device 1 |",
        "           +----------+----------+",
        "     row 2 | device 2 | device 3 |",
        "           +----------+----------+",
    ]


def test_explain_takes_n_from_a_test_id(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "specs/uneven.yaml::uneven_rows[xla-n2-grad]")
    assert code == 0
    assert out.startswith("specs/uneven.yaml::uneven_rows at n=2:")


def test_explain_module_shows_each_parameter(repo: Path, capsys) -> None:
    code, out, _ = run(
        capsys, "explain", "specs/modules.yaml::mlp_column_then_row", "--devices", "8"
    )
    assert code == 0
    assert "  shard rules [0] params 'fc1.*' -> [Shard(0)]" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  fc")}
    assert rows["fc1.weight"].split()[1:6] == ["[32,", "16]", "[0]", "[Shard(0)]", "[4,"]
    assert rows["fc2.weight"].split()[1:5] == ["[8,", "32]", "[1]", "[Shard(1)]"]
    assert rows["fc2.bias"].endswith("not sharded (no rule matches)")


def test_explain_skipped_case_says_where_it_runs(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "specs/uneven.yaml::six_over_four", "--devices", "8")
    assert code == 1
    assert "skipped at n=8: requires max_devices: 4, but this run has n=8; it runs at n=4" in out


def test_explain_case_with_problems(repo: Path, capsys) -> None:
    code, out, _ = run(capsys, "explain", "tests/malformed/mesh_product.yaml::grid")
    assert code == 1
    assert "tests/malformed/mesh_product.yaml:6:11: mesh [2, 3] is 2 x 3 = 6 devices" in out


def test_explain_unknown_case_lists_the_ids(repo: Path, capsys) -> None:
    code, out, err = run(capsys, "explain", "specs/distribute_tensor.yaml::shard_1")
    assert code == 2 and out == ""
    assert "no case 'shard_1' in specs/distribute_tensor.yaml; did you mean 'shard_1d'?" in err
    assert "cases in specs/distribute_tensor.yaml are: shard_1d, replicate_1d, shard_2d_mesh" in err


def test_explain_without_id_or_file(repo: Path, capsys) -> None:
    code, _, err = run(capsys, "explain", "specs/distribute_tensor.yaml")
    assert code == 2 and "as in specs/distribute_tensor.yaml::ID" in err and "shard_1d" in err
    code, _, err = run(capsys, "explain", "specs/nope.yaml::x")
    assert code == 2 and "no such spec file: specs/nope.yaml" in err


# --- fill ---------------------------------------------------------------------------

BEFORE = """\
# yaml-language-server: $schema=../schema/spec.schema.json
version: 1
defaults:
  input: {requires_grad: [true, false]}
cases:
  # rows, split evenly
  - id: rows                 # a comment that must stay
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [3*n, 3]}
    expect:
      # what device 0 holds
      local_shape: [3, 3]

  # --- next section ---
  - id: no_expect
    mesh: [n]
    placements: [Replicate()]
    input: {shape: [n, 2]}

  - id: flow_expect
    mesh: [n]
    placements: [Shard(1)]
    input: {shape: [4, 2*n]}
    expect: {padded_local_shape: [4, 2]}

  - id: uneven
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [3, 5]}

  - id: error_case
    mesh: [n]
    placements: [Partial()]
    input: {shape: [n, 2]}
    expect: {error: {type: ValueError}}

  - id: done
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n]}
    expect: {global_shape: [n], local_shape: [1]}

  - id: model
    kind: module
    mesh: [n]
    module:
      fc1: Linear(8, 8)
    shard:
      - {params: "*", placements: [Shard(0)]}

  - {id: one_line, mesh: [n], placements: [Shard(0)], input: {shape: [n]}}

  - id: last
    mesh: [n]
    placements: [Shard(-1)]
    input: {shape: [2, 4*n]}"""

AFTER = """\
# yaml-language-server: $schema=../schema/spec.schema.json
version: 1
defaults:
  input: {requires_grad: [true, false]}
cases:
  # rows, split evenly
  - id: rows                 # a comment that must stay
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [3*n, 3]}
    expect:
      # what device 0 holds
      global_shape: [3*n, 3]
      local_shape: [3, 3]

  # --- next section ---
  - id: no_expect
    mesh: [n]
    placements: [Replicate()]
    input: {shape: [n, 2]}
    expect:
      global_shape: [n, 2]
      local_shape: [n, 2]

  - id: flow_expect
    mesh: [n]
    placements: [Shard(1)]
    input: {shape: [4, 2*n]}
    expect: {global_shape: [4, 2*n], local_shape: [4, 2], padded_local_shape: [4, 2]}

  - id: uneven
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [3, 5]}
    expect:
      global_shape: [3, 5]

  - id: error_case
    mesh: [n]
    placements: [Partial()]
    input: {shape: [n, 2]}
    expect: {error: {type: ValueError}}

  - id: done
    mesh: [n]
    placements: [Shard(0)]
    input: {shape: [n]}
    expect: {global_shape: [n], local_shape: [1]}

  - id: model
    kind: module
    mesh: [n]
    module:
      fc1: Linear(8, 8)
    shard:
      - {params: "*", placements: [Shard(0)]}

  - {id: one_line, mesh: [n], placements: [Shard(0)], input: {shape: [n]}}

  - id: last
    mesh: [n]
    placements: [Shard(-1)]
    input: {shape: [2, 4*n]}
    expect:
      global_shape: [2, 4*n]
      local_shape: [2, 4]
"""


def test_fill_check_then_fill_then_clean(workdir: Path, capsys) -> None:
    spec = write(workdir / "specs" / "mine.yaml", BEFORE)
    code, out, _ = run(capsys, "fill", "--check")
    assert code == 1
    assert spec.read_text() == BEFORE
    assert "specs/mine.yaml:7:5: rows: would add global_shape: [3*n, 3]\n" in out
    assert "run `shardspec fill` (without --check) to write them" in out

    code, out, _ = run(capsys, "fill")
    assert code == 0, out
    assert spec.read_text() == AFTER
    assert "specs/mine.yaml:16:5: no_expect: added global_shape: [n, 2], local_shape: [n, 2]" in out
    assert (
        "specs/mine.yaml:27:5: uneven: local_shape left out: device 0's piece is not the same at "
        "every n (n=1: [3, 5]; n=2: [2, 5]; n=4: [1, 5]; n=8: [1, 5])"
    ) in out
    assert (
        "one_line: the case is written on one line; add by hand: expect: {global_shape: [n], local_shape: [1]}"
        in out
    )
    assert out.splitlines()[-1] == "1 file at n=1, 2, 4, 8: 5 cases changed in 1 file"

    assert run(capsys, "fill", "--check")[0] == 0
    assert run(capsys, "validate")[0] == 0


def test_fill_keeps_crlf_and_uses_defaults_input(workdir: Path, capsys) -> None:
    text = (
        "version: 1\r\ndefaults:\r\n  input: {shape: [2*n, 2]}\r\ncases:\r\n"
        "  - id: a\r\n    mesh: [n]\r\n    placements: [Shard(0)]\r\n"
    )
    spec = write(workdir / "specs" / "crlf.yaml", text)
    assert run(capsys, "fill", "--devices", "2,4")[0] == 0
    assert spec.read_bytes().decode() == text + (
        "    expect:\r\n      global_shape: [2*n, 2]\r\n      local_shape: [2, 2]\r\n"
    )


def test_fill_writes_numbers_for_a_case_that_runs_at_one_count(workdir: Path, capsys) -> None:
    spec = write(
        workdir / "specs" / "four.yaml",
        "version: 1\ncases:\n  - id: seven\n    requires: {min_devices: 4, max_devices: 4}\n"
        "    mesh: [n]\n    placements: [Shard(0)]\n    input: {shape: [7, 3]}\n",
    )
    assert run(capsys, "fill")[0] == 0
    assert spec.read_text().endswith(
        "    expect:\n      global_shape: [7, 3]\n      local_shape: [2, 3]\n"
    )


def test_fill_writes_the_predicted_sharding_spec_by_n(workdir: Path, capsys) -> None:
    spec = write(
        workdir / "specs" / "specs.yaml",
        "version: 1\ncases:\n  - id: grid\n    requires: {devices_divisible_by: 2}\n"
        "    mesh: [2, n/2]\n    placements: [Replicate(), Shard(0)]\n"
        "    input: {shape: [n, 3]}\n    expect: {global_shape: [n, 3]}\n",
    )
    code, out, _ = run(capsys, "fill", "--sharding-spec", "--devices", "2,4,8")
    assert code == 0, out
    assert spec.read_text().endswith(
        # at n=2 the mesh is [2, 1]: the rows are split over an axis of one device
        '    expect: {local_shape: [2, 3], sharding_spec: {2: "{replicated}", '
        '4: "{devices=[2,1,2]0,2,1,3 last_tile_dim_replicate}", '
        '8: "{devices=[4,1,2]0,4,1,5,2,6,3,7 last_tile_dim_replicate}"}, global_shape: [n, 3]}\n'
    )
    assert run(capsys, "validate", "--devices", "2,4,8")[0] == 0
    assert run(capsys, "fill", "--check", "--sharding-spec", "--devices", "2,4,8")[0] == 0


def test_fill_leaves_a_broken_file_alone(workdir: Path, capsys) -> None:
    text = "version: 1\ncases:\n  - id: a\n    mesch: [n]\n"
    spec = write(workdir / "specs" / "bad.yaml", text)
    code, out, _ = run(capsys, "fill")
    assert code == 1
    assert spec.read_text() == text
    assert (
        "specs/bad.yaml:3:5: a: not filled: it has problems; run `shardspec validate` first" in out
    )
    text = "version: 2\ncases:\n  - id: a\n    mesh: [n]\n"
    spec.write_text(text)
    code, out, _ = run(capsys, "fill", "--check")
    assert code == 1
    assert spec.read_text() == text
    assert "specs/bad.yaml:1:10: version must be 1, not the number 2\n" in out
    assert "specs/bad.yaml: not filled: the file has problems" in out
    assert out.splitlines()[-1].endswith("1 file or case not filled: see above")


def test_fill_on_the_library_only_adds_lines(tmp_path: Path, repo: Path, capsys) -> None:
    copy = tmp_path / "specs"
    copy.mkdir()
    for path in (repo / "specs").glob("*.yaml"):
        (copy / path.name).write_bytes(path.read_bytes())
    assert run(capsys, "fill", str(copy))[0] == 0
    added = re.compile(r" +(expect:|(global_shape|local_shape): \[[^\]]*\])")
    for path in (repo / "specs").glob("*.yaml"):
        old, new = path.read_text().splitlines(), (copy / path.name).read_text().splitlines()
        rest = iter(new)
        kept = [line for line in old if not line.lstrip().startswith("expect: {")]
        assert all(line in rest for line in kept), f"{path.name}: a line was changed or moved"
        assert all(
            added.fullmatch(line) or "expect: {" in line for line in new if line not in old
        ), path.name
    assert run(capsys, "validate", str(copy))[0] == 0
    assert run(capsys, "fill", "--check", str(copy))[0] == 0


# --- new ----------------------------------------------------------------------------


def test_new_writes_a_clean_commented_spec(workdir: Path, capsys) -> None:
    code, out, _ = run(capsys, "new", "my_cases")
    assert code == 0 and out.startswith("wrote specs/my_cases.yaml\n")
    text = (workdir / "specs" / "my_cases.yaml").read_text()
    assert text.startswith("# yaml-language-server: $schema=../schema/spec.schema.json\n")
    data = yaml.safe_load(text)
    assert [c.get("kind", "tensor") for c in data["cases"]] == ["tensor", "module"]
    assert run(capsys, "validate")[0] == 0
    assert run(capsys, "fill", "--check")[0] == 0
    code, out, _ = run(capsys, "list")
    assert "split_rows  xla     run x2  run x2  run x2  run x2" in out


def test_new_refuses_to_overwrite_and_bad_names(workdir: Path, capsys) -> None:
    spec = write(workdir / "specs" / "taken.yaml", "version: 1\n")
    code, _, err = run(capsys, "new", "taken")
    assert code == 2 and "specs/taken.yaml already exists" in err
    assert spec.read_text() == "version: 1\n"
    code, _, err = run(capsys, "new", "My Cases")
    assert code == 2 and "use lowercase letters, digits, _ and -" in err
    code, _, err = run(capsys, "new", "x", "--folder", "nowhere")
    assert code == 2 and "there is no nowhere/ folder here" in err


def test_new_spec_cases_pass_on_xla(workdir: Path, capsys) -> None:
    assert run(capsys, "new", "fresh")[0] == 0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "specs/fresh.yaml",
            "-q",
            "-p",
            "no:cacheprovider",
            "--devices",
            "2",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


# --- help, version, the script, editor support ----------------------------------------


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"shardspec {__version__}\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("validate", "list", "explain", "fill", "new"):
        assert f"shardspec {command}" in out
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: shardspec {command}")


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_the_script_imports_no_torch(repo: Path) -> None:
    assert SCRIPT.exists(), "the shardspec script is not installed in this environment"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "validate"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("no problems")
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "runner.expand" in names
    assert not {n for n in names if n.split(".")[0] in ("torch", "torch_xla", "numpy")}


def test_editor_support_files(repo: Path) -> None:
    settings = json.loads((repo / ".vscode" / "settings.json").read_text())
    assert "specs/*.yaml" in settings["yaml.schemas"]["./schema/spec.schema.json"]
    hooks = yaml.safe_load((repo / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "shardspec-validate")
    assert hook["entry"] == "shardspec validate" and hook["language"] == "python"
    assert re.search(hook["files"], "specs/a.yaml") and re.search(hook["files"], "specs/sub/b.yml")
    assert not re.search(hook["files"], ".github/workflows/ci.yaml")
    for path in (repo / "specs").glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schema/spec.schema.json", path.name
