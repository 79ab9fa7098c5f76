"""Expressions in n, placements and layers: tiny parsers, never eval."""

from __future__ import annotations

import builtins

import pytest

from runner import expr
from runner.expand import requires_hint
from runner.expr import ExprError
from runner.layers import LayerError, parse_layer
from runner.placements import Placement
from runner.placements import parse as parse_placement

# --- expressions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n", "value"),
    [
        (3, 4, 3),
        ("7", 4, 7),
        ("n", 4, 4),
        ("3*n", 4, 12),
        ("3*n/2", 4, 6),
        ("n/2", 8, 4),
        ("2*n+1", 3, 7),
        ("2+3*n", 2, 8),  # * before +
        ("(2+3)*n", 2, 10),
        ("n-1-1", 5, 3),  # left to right
        ("12/n/2", 3, 2),
        ("n//3", 8, 2),
        ("n%3", 8, 2),
        ("-n+10", 4, 6),
        ("--n", 4, 4),
        ("  n *\t2 ", 3, 6),
        ("((((n))))", 5, 5),
        ("9" * 150, 1, int("9" * 150)),
    ],
)
def test_expressions_evaluate(text, n, value):
    assert expr.parse(text).evaluate(n) == value


def test_uses_n():
    assert expr.parse("3*n").uses_n
    assert not expr.parse("3*4").uses_n
    assert not expr.parse(12).uses_n


def test_slash_must_divide_exactly_and_says_where():
    parsed = expr.parse("3*n/2")
    assert parsed.evaluate(4) == 6
    with pytest.raises(ExprError) as info:
        parsed.evaluate(3)
    assert str(info.value) == "'3*n/2' is not a whole number when n=3 (9/2 leaves 1)"


@pytest.mark.parametrize("text", ["n/(n-4)", "n//(n-4)", "n%(n-4)"])
def test_division_by_zero_is_an_error_not_a_crash(text):
    with pytest.raises(ExprError, match=r"divides by zero when n=4"):
        expr.parse(text).evaluate(4)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "an empty expression"),
        ("   ", "an empty expression"),
        ("n**2", "unexpected '*'"),
        ("2n", "unexpected 'n'"),
        ("n 2", "unexpected '2'"),
        ("m", "'m' is not allowed"),
        ("N", "'N' is not allowed"),
        ("1.5", "'.' is not allowed"),
        ("1e3", "'e' is not allowed"),
        ("__import__('os')", "'_' is not allowed"),
        ("len(n)", "'l' is not allowed"),
        ("n.bit_length()", "'.' is not allowed"),
        ("n;1", "';' is not allowed"),
        ("n\n+1", "'\\n' is not allowed"),
        ("(n+1", "has a '(' without a matching ')'"),
        ("n+1)", "unexpected ')'"),
        ("n+", "ends too early"),
        ("*n", "unexpected '*'"),
        ("()", "unexpected ')'"),
        ("(" * 30 + "n" + ")" * 30, "nests parentheses too deeply"),
        ("n+" * 101 + "n", "longer than 200 characters"),
        ("\uff11", "is not allowed"),  # a full-width digit is not a digit here
    ],
)
def test_anything_else_is_refused_in_plain_words(text, words):
    with pytest.raises(ExprError) as info:
        expr.parse(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [True, False, 1.5, None, [1], {"n": 1}])
def test_only_ints_and_text_are_sizes(value):
    with pytest.raises(ExprError, match="is not a size"):
        expr.parse(value)


def test_nothing_is_evaluated_by_python(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/compile used")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert expr.parse("(n+1)*3//2%7").evaluate(5) == 2
    with pytest.raises(ExprError):
        expr.parse("__import__('os').system('true')")


def test_unary_minus_chains_stay_within_the_stack():
    assert expr.parse("-" * 199 + "n").evaluate(2) == -2


# --- requires hints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n", "requires", "hint"),
    [
        ("n/2", 3, None, "devices_divisible_by: 2"),
        ("n/4", 6, None, "devices_divisible_by: 4"),
        ("n-4", 4, None, "min_devices: 5"),
        ("8-n", 8, None, "max_devices: 7"),
        ("n/2-1", 3, None, "devices_divisible_by: 2, min_devices: 4"),
        ("n/2-1", 2, {"devices_divisible_by": 2}, "min_devices: 4"),
    ],
)
def test_requires_hint_names_the_requirement_that_skips_it(text, n, requires, hint):
    assert requires_hint(text, n, requires=requires) == (
        f"add requires: {{{hint}}} to skip such device counts"
    )


def test_requires_hint_when_nothing_helps():
    assert "fix the expression" in requires_hint("n-n", 4)
    assert "add a requires: entry" in requires_hint("n/(n-4)", 4)


# --- placements ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "placement"),
    [
        ("Shard(0)", Placement("shard", 0)),
        ("Shard(-1)", Placement("shard", -1)),
        ("Shard( 2 )", Placement("shard", 2)),
        (" Shard(+1) ", Placement("shard", 1)),
        ("Replicate()", Placement("replicate")),
        ("Partial()", Placement("partial")),
    ],
)
def test_placements_parse(text, placement):
    assert parse_placement(text) == placement


@pytest.mark.parametrize(
    "text",
    [
        "Shard()",
        "Shard(x)",
        "shard(0)",
        "Shard(0.5)",
        "Shard(0,1)",
        "Replicate(0)",
        "_StridedShard(0)",
        "Shard(1234567)",
        "Shard(0)Shard(1)",
        "",
        "Shard(__import__('os'))",
    ],
)
def test_other_placements_are_refused_with_the_forms(text):
    with pytest.raises(ValueError) as info:
        parse_placement(text)
    assert "write Shard(0), Shard(-1), Replicate() or Partial()" in str(info.value)


@pytest.mark.parametrize("value", [None, 0, ["Shard(0)"]])
def test_a_placement_must_be_text(value):
    with pytest.raises(ValueError, match="is not a placement"):
        parse_placement(value)


def test_placement_text_and_normalized_dims():
    assert str(parse_placement("Shard(-1)")) == "Shard(-1)"
    assert parse_placement("Shard(-1)").normalized(3) == Placement("shard", 2)
    assert parse_placement("Shard(1)").normalized(3) == Placement("shard", 1)
    assert parse_placement("Replicate()").normalized(3) == Placement("replicate")
    assert [str(parse_placement(t)) for t in ("Replicate()", "Partial()")] == [
        "Replicate()",
        "Partial()",
    ]
    assert parse_placement("Shard(0)").as_json() == ["shard", 0]


# --- layers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["Shard(0)", "Shard(-1)", "Replicate()", "Partial()", "Partial(avg)", "Partial(max)"]
)
def test_placements_come_back_from_their_json(text):
    placement = parse_placement(text)
    assert Placement.from_json(placement.as_json()) == placement
    assert str(Placement.from_json(placement.as_json())) == str(placement)


def test_placements_shardspec_has_no_word_for_keep_their_names():
    strided = Placement.from_json(["_StridedShard"])
    assert str(strided) == "_StridedShard()"
    assert strided not in (parse_placement("Replicate()"), parse_placement("Shard(0)"))
    assert str(Placement.from_json(["partial", "prod"])) == "Partial(prod)"


def test_layers_parse_with_sizes_in_n():
    layer = parse_layer("Linear(2*n, n, bias=false)", 4)
    assert (layer.kind, layer.sizes, layer.bias) == ("Linear", (8, 4), False)
    assert layer.params == {"weight": (4, 8)}
    assert parse_layer("Embedding(100, 16)", 1).params == {"weight": (100, 16)}
    assert parse_layer("ReLU()", 1).params == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "MultiheadAttention(8, 2)",
            "unknown layer 'MultiheadAttention'; allowed layers: Linear(in, out[, bias=false])",
        ),
        ("Linaer(8, 4)", "did you mean Linear?"),
        ("Linear(8)", "Linear takes 2 size(s) (in_features, out_features), not 1"),
        ("Linear(8, 4, bias=maybe)", "takes true or false, not 'maybe'"),
        ("ReLU(inplace=true)", "ReLU has no option 'inplace'"),
        ("Linear", "is not a layer"),
        ("__import__('os').system('true')", "unknown layer '__import__'"),
        ("Linear(n-4, 2)", "'n-4' is 0 when n=4; sizes must be at least 1"),
    ],
)
def test_layer_mistakes_are_plain(text, words):
    with pytest.raises(LayerError) as info:
        parse_layer(text, 4)
    assert words in str(info.value)


def test_a_layer_size_that_fails_for_this_n_names_its_expression():
    with pytest.raises(LayerError) as info:
        parse_layer("Linear(n/2, 4)", 3)
    assert info.value.expression == "n/2"
    assert "'n/2' is not a whole number when n=3" in str(info.value)
    with pytest.raises(LayerError) as info:
        parse_layer("Linear(n*x, 4)", 3)
    assert info.value.expression is None  # wrong at every n: no requires would help
