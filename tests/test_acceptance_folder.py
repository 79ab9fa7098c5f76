"""Issue 4's acceptance: every malformed file beside valid specs, one pytest run on the folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from _corpus import corpus, expected

REPO = Path(__file__).resolve().parent.parent
SENTINEL = "shardspec-was-executed"


def test_malformed_files_beside_valid_specs(pytester: pytest.Pytester) -> None:
    specs = pytester.path / "specs"
    specs.mkdir()
    shutil.copy(REPO / "specs" / "distribute_tensor.yaml", specs)
    files = corpus()
    for path in files:
        shutil.copy(path, specs)
    # Code hidden in YAML must never run: if it did, this file would appear.
    (specs / "exec_attempt.yaml").write_text(
        "# expect: 3: YAML tags\n"
        "version: 1\n"
        f"description: !!python/object/apply:os.system ['touch {SENTINEL}']\n"
        "cases: [{id: a, mesh: [n], placements: ['Shard(0)'], input: {shape: [n]}}]\n"
    )
    devices = sorted({expected(path).devices for path in files})
    result = pytester.runpytest("specs", "--devices", ",".join(map(str, devices)))
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not (pytester.path / SENTINEL).exists()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    # The valid cases pass (or skip where their requires say so), at every device count.
    seed = "specs/distribute_tensor.yaml: 3 case(s) found; tests: "
    seed_line = next(line for line in out.splitlines() if line.startswith(seed))
    assert "failed" not in seed_line and "passed" in seed_line
    # Each malformed file is reported with its path and line, and listed in the ledger.
    # (A file-level mistake, e.g. in defaults, is reported where it is written, so the line
    # may be another than the one the pure pipeline gives for each case.)
    for path in [*files, specs / "exec_attempt.yaml"]:
        assert re.search(rf"^specs/{re.escape(path.name)}:\d+:\d+: \S", out, re.M), path.name
        assert re.search(
            rf"^specs/{re.escape(path.name)}: \d+ case\(s\) found; tests: .*failed", out, re.M
        )
    at_their_line = [p for p in files if f"specs/{p.name}:{expected(p).line}:" in out]
    assert len(at_their_line) >= len(files) - 3
