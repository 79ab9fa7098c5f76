"""``shardspec new NAME``: a commented spec file to start from."""

from __future__ import annotations

import re
from pathlib import Path

from .schema import schema_path

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")

TEMPLATE = """\
# yaml-language-server: $schema={schema}
# {name}.yaml: sharding cases, started by `shardspec new {name}`.
#
# Check it (no device needed):       shardspec validate {path}
# See what a case does:              shardspec explain {path}::split_rows
# Run its cases on XLA (on the CPU): .venv/bin/python -m pytest {path}
#
# n is the number of devices a test runs with (4 unless --devices says otherwise).
# Sizes can be written with it: 2*n, n/2, n+1.
version: 1
description: What these cases check, in a sentence or two.

cases:
  # --- A tensor case: one tensor, split over the devices ------------------------------
  - id: split_rows                    # a name for the case: lowercase, digits, _ . -
    description: split the rows of a table over every device, 2 rows each
    mesh: [n]                         # the devices in a row: one mesh axis of n devices
    placements: [Shard(0)]            # one per mesh axis: Shard(0) splits tensor dim 0 (rows)
    input:
      shape: [2*n, 3]                 # 2*n rows, 3 columns
      dtype: float32                  # float32 (default), float64, float16, bfloat16, int32, int64, bool
      requires_grad: [true, false]    # a list runs the case once for each value
    expect:                           # checked against DTensor's rules before anything runs
      global_shape: [2*n, 3]          # the whole tensor's shape
      local_shape: [2, 3]             # the piece device 0 holds

  # --- A module case: a small model whose parameters are split ------------------------
  - id: small_mlp
    description: a two-layer model with every weight split by rows
    kind: module
    mesh: [n]
    module:                           # layers by name, in order
      fc1: Linear(16, 32)             # Linear(inputs, outputs): weight [32, 16], bias [32]
      relu: ReLU()
      fc2: Linear(32, 8)
    shard:                            # the first rule whose params pattern matches decides
      - {{params: "*.weight", placements: [Shard(0)]}}
    expect:
      sharded_params: [fc1.weight, fc2.weight]
      unsharded_params: [fc1.bias, fc2.bias]       # no rule matched them
      forward: {{input_shape: [4, 16], atol: 1.0e-5}}  # same output as the unsplit model
"""


def create(name: str, folder: Path) -> Path:
    """Write ``folder/NAME.yaml``; refuses bad names, a missing folder and existing files."""
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    if not NAME.fullmatch(stem):
        raise ValueError(
            f"'{name}' can't be a spec file name: use lowercase letters, digits, _ and -, "
            "such as my_cases"
        )
    if not folder.is_dir():
        raise ValueError(
            f"there is no {folder}/ folder here: run this from the folder that holds {folder}/ "
            "(or name another with --folder)"
        )
    path = folder / f"{stem}.yaml"
    if path.exists():
        raise ValueError(f"{path} already exists; pick another name (nothing was changed)")
    beside = folder / ".." / "schema" / "spec.schema.json"
    schema = "../schema/spec.schema.json" if beside.is_file() else schema_path().as_posix()
    path.write_text(TEMPLATE.format(name=stem, path=path, schema=schema), encoding="utf-8")
    return path
