"""Module cases with steps (issue 11): training on both engines, parameters as values."""

from __future__ import annotations

import pytest
from _files import write

TRAINING = """
version: 1
cases:
  - id: mlp_two_steps
    kind: module
    mesh: [n]
    module:
      fc1: Linear(8, 4*n)
      act: Tanh()
      fc2: Linear(4*n, 4)
    shard:
      - {params: "fc1.*", placements: [Shard(0)]}
      - {params: "fc2.weight", placements: [Shard(1)]}
    tensors:
      x: {shape: [4, 8]}
    steps:
      - w0 = clone(model.fc1.weight)
      - out = model(x)
      - loss = sum(out)
      - backward(loss)
      - sgd_step(0.1)
      - out2 = model(x)
      - loss2 = sum(out2)
      - backward(loss2)
      - sgd_step(0.1)
    expect:
      model.fc1.weight: {placements: [Shard(0)], values: {atol: 1.0e-5, rtol: 1.0e-4}}
      model.fc2.bias: {placements: [Replicate()]}
  - id: trained_weight_is_not_the_initial_one
    kind: module
    mesh: [n]
    module:
      fc1: Linear(8, 4*n)
    shard:
      - {params: "fc1.weight", placements: [Shard(0)]}
    tensors:
      x: {shape: [4, 8]}
    steps:
      - w0 = clone(model.fc1.weight)
      - out = model(x)
      - loss = sum(out)
      - backward(loss)
      - sgd_step(0.5)
    expect:
      model.fc1.weight: {values: {equals: w0}}
"""


def test_training_steps_match_the_cpu_and_a_wrong_value_names_the_parameter(
    pytester: pytest.Pytester,
) -> None:
    write(pytester.path, "specs/train.yaml", TRAINING)
    result = pytester.runpytest("--engines", "xla,native", "--devices", "4", "-rf")
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    # The parameter's name, the line of the expectation, expected against actual.
    result.stdout.re_match_lines(
        [
            r"specs/train.yaml:\d+:\d+: model.fc1.weight: expect.values",
            r"  expected: exactly equal to w0",
            r"  actual:   different",
        ]
    )
    assert "trained_weight_is_not_the_initial_one[xla-n4]" in out
    assert "trained_weight_is_not_the_initial_one[native-n4]" in out


def test_a_placement_the_rules_contradict_is_found_before_running(
    pytester: pytest.Pytester,
) -> None:
    write(
        pytester.path,
        "specs/wrong.yaml",
        """
        version: 1
        cases:
          - id: wrong_placement
            kind: module
            mesh: [n]
            module:
              fc1: Linear(8, 4*n)
            shard:
              - {params: "fc1.weight", placements: [Shard(0)]}
            tensors:
              x: {shape: [4, 8]}
            steps:
              - out = model(x)
            expect:
              model.fc1.weight: {placements: [Shard(1)]}
        """,
    )
    result = pytester.runpytest("--devices", "4")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "specs/wrong.yaml:15:38: placements is [[]Shard(1)[]], but the case asks for "
            "[[]Shard(0)[]] for model.fc1.weight at n=4*"
        ]
    )
