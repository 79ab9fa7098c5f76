"""Module cases (kind: module) on real XLA, through pytester."""

from __future__ import annotations

import textwrap

import pytest

MODULES = """
version: 1
cases:
  - id: partial_rules
    kind: module
    mesh: [n]
    module:
      emb: Embedding(50, 16)
      norm: LayerNorm(16)
      fc1: Linear(16, 4*n)
      act: GELU()
      fc2: Linear(4*n, 3, bias=false)
    shard:
      - {params: "fc1.weight", placements: [Shard(0)]}
      - {params: "fc2.*", placements: [Shard(-1)]}
      - {params: "emb.weight", placements: [Replicate()]}
    expect:
      sharded_params: [fc1.weight, fc2.weight]
      unsharded_params: [norm.weight, norm.bias, fc1.bias]
      sharding_spec:
        fc1.weight: {2: "{devices=[2,1]0,1}"}
        fc2.weight: "{devices=[1,2]0,1}"
      forward: {input_shape: [4, 7], atol: 1.0e-5}
  - id: wrong_claim
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)", fc2: "Linear(4, 2)"}
    shard:
      - {params: "fc1.*", placements: [Shard(0)]}
    expect:
      sharded_params: [fc1.weight, fc2.weight]
  - id: unknown_param
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "*", placements: [Shard(0)]}
    expect:
      sharded_params: [fc1.wieght]
  - id: partial_param_rejected
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "fc1.weight", placements: [Partial()]}
    expect: {error: {type: ValueError, match: "Unsupported placement"}}
  - id: rule_matches_nothing
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "fc2.*", placements: [Shard(0)]}
  - id: param_divergence
    kind: module
    mesh: [n, 1]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "fc1.weight", placements: [Shard(0), Shard(0)]}
  - id: bias_dim_out_of_range
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "*", placements: [Shard(1)]}
  - id: replicated_bias
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "fc1.weight", placements: [Shard(0)]}
      - {params: "fc1.bias", placements: [Replicate()]}
    expect:
      sharded_params: [fc1.weight]
      replicated_params: [fc1.bias]
  - id: replicated_listed_as_unsharded
    kind: module
    mesh: [n]
    module: {fc1: "Linear(8, 4)"}
    shard:
      - {params: "fc1.bias", placements: [Replicate()]}
    expect:
      unsharded_params: [fc1.weight, fc1.bias]
"""


def test_module_cases(pytester: pytest.Pytester) -> None:
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "modules.yaml").write_text(textwrap.dedent(MODULES).lstrip())
    result = pytester.runpytest("--devices", "2")
    result.assert_outcomes(passed=3, failed=6)
    out = result.stdout.str()
    # A claim that contradicts the shard rules is a spec problem, found before anything runs.
    assert (
        "specs/modules.yaml:30:36: 'fc2.weight' is in sharded_params, but no shard rule "
        "matches it, so it stays a plain tensor without a sharding annotation; list it under "
        "unsharded_params"
    ) in out
    assert (
        "specs/modules.yaml:81:38: 'fc1.bias' is in unsharded_params, but shard rule [0] "
        "places it with [Replicate()], which gives it the annotation {replicated}; list it "
        "under replicated_params instead (or change the rule)"
    ) in out
    assert (
        "specs/modules.yaml:38:24: 'fc1.wieght' is not a parameter of this module; "
        "did you mean 'fc1.weight'?"
    ) in out
    assert (
        "specs/modules.yaml:51:18: shard rule 'fc2.*' matches no parameter of this module "
        "(a typo?); its parameters are: fc1.weight, fc1.bias"
    ) in out
    # torch_xla keeps only the last mesh axis (size 1 here): the parameter is not split.
    assert "specs/modules.yaml:57:44: fc1.weight's shards differ from DTensor's layout" in out
    assert "specs/modules.yaml:63:36: Shard(1) is outside parameter fc1.bias [4]'s 1 dim(s)" in out
    assert "Traceback" not in out
