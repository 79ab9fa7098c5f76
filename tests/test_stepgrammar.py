"""The step grammar: what it reads, what it refuses (located, in plain words), and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import placements
from runner.placements import Placement
from runner.stepgrammar import (
    DTYPES,
    RESERVED,
    DType,
    Expr,
    Name,
    Step,
    StepSyntaxError,
    format_step,
    parse_step,
)

S0 = Placement("shard", 0)
R = Placement("replicate")
P = Placement("partial")


def _parts(step: Step) -> tuple:
    return step.target, step.call, step.args, step.kwargs


# --- what it reads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target", "call", "args", "kwargs"),
    [
        ("y = redistribute(x, [Replicate()])", "y", "redistribute", (Name("x"), [R]), {}),
        ("backward(loss)", None, "backward", (Name("loss"),), {}),
        ("sync()", None, "sync", (), {}),
        ("y=relu( x )", "y", "relu", (Name("x"),), {}),
        ("  y\t=\nrelu(x,)  ", "y", "relu", (Name("x"),), {}),
        ("g = clone(x.grad)", "g", "clone", (Name("x.grad"),), {}),
        (
            "o = linear(x, model.fc1.weight, bias=model.fc1.bias)",
            "o",
            "linear",
            (Name("x"), Name("model.fc1.weight")),
            {"bias": Name("model.fc1.bias")},
        ),
        (
            "s = sum(z, dim=0, keepdim=true)",
            "s",
            "sum",
            (Name("z"),),
            {"dim": 0, "keepdim": True},
        ),
        ("s = sum(z, [0, -1], false)", "s", "sum", (Name("z"), [0, -1], False), {}),
        ("h = to(x, bfloat16)", "h", "to", (Name("x"), DType("bfloat16")), {}),
        ("b = linear(x, w, null)", "b", "linear", (Name("x"), Name("w"), None), {}),
        ("m = mul(x, 0.1)", "m", "mul", (Name("x"), 0.1), {}),
        ("m = mul(x, 1e-3)", "m", "mul", (Name("x"), 0.001), {}),
        ("m = mul(x, 1.0e-5)", "m", "mul", (Name("x"), 1e-5), {}),
        ("m = add(x, -2)", "m", "add", (Name("x"), -2), {}),
        ("m = add(x, - 2.5)", "m", "add", (Name("x"), -2.5), {}),
        ("r = reshape(z, [2*n, -1])", "r", "reshape", (Name("z"), [Expr("2*n"), -1]), {}),
        (
            "r = reshape(z, [n/2, (n+1)//2, 4*n+1])",
            "r",
            "reshape",
            (Name("z"), [Expr("n/2"), Expr("(n+1)//2"), Expr("4*n+1")]),
            {},
        ),
        ("r = reshape(z, [n, 2 * 3])", "r", "reshape", (Name("z"), [Expr("n"), Expr("2 * 3")]), {}),
        ("r = reshape(z, [-n])", "r", "reshape", (Name("z"), [Expr("-n")]), {}),
        (
            "d = from_local(t, [Shard(0), Partial()], shape=[4*n, 3], run_check=false)",
            "d",
            "from_local",
            (Name("t"), [S0, P]),
            {"shape": [Expr("4*n"), 3], "run_check": False},
        ),
        (
            "d = f(x, [Shard(-1), Shard(+2), Shard( 1 )])",
            "d",
            "f",
            (Name("x"), [Placement("shard", -1), Placement("shard", 2), Placement("shard", 1)]),
            {},
        ),
        (
            "d = f(x, [Partial(sum), Partial(avg), Partial(max), Partial(min)])",
            "d",
            "f",
            (
                Name("x"),
                [
                    P,
                    Placement("partial", reduce="avg"),
                    Placement("partial", reduce="max"),
                    Placement("partial", reduce="min"),
                ],
            ),
            {},
        ),
        ("d = f(x, Replicate())", "d", "f", (Name("x"), R), {}),
        (
            "a = mark_sharding(t, [0, null, [0, 1], dp])",
            "a",
            "mark_sharding",
            (Name("t"), [0, None, [0, 1], Name("dp")]),
            {},
        ),
        ("c = cat([a, b], dim=0)", "c", "cat", ([Name("a"), Name("b")],), {"dim": 0}),
        ("e = f([])", "e", "f", ([],), {}),
        ("e = f([[1], [[2]]])", "e", "f", ([[1], [[2]]],), {}),
        ("_x1 = f(_y2)", "_x1", "f", (Name("_y2"),), {}),
        ("sum_ = sum(sum)", "sum_", "sum", (Name("sum"),), {}),
    ],
)
def test_steps_that_parse(text, target, call, args, kwargs):
    step = parse_step(text)
    assert _parts(step) == (target, call, args, kwargs)
    assert step.text == text
    again = parse_step(format_step(step))
    assert _parts(again) == _parts(step)


def test_canonical_text():
    step = parse_step("y=from_local( t,[Shard(0),Partial(avg)],shape=[(n+1)//2,3],)")
    assert str(step) == "y = from_local(t, [Shard(0), Partial(avg)], shape=[(n+1)//2, 3])"
    assert str(parse_step("f(true, false, null, 1e-05, float16)")) == (
        "f(true, false, null, 1e-05, float16)"
    )


def test_every_dtype_word_is_a_dtype():
    step = parse_step("f(" + ", ".join(DTYPES) + ")")
    assert step.args == tuple(DType(d) for d in DTYPES)


def test_expr_evaluates_for_n():
    step = parse_step("r = reshape(z, [(n+1)//2, n/2, 4*n+1])")
    assert [e.evaluate(4) for e in step.args[1]] == [2, 2, 17]


# --- what it refuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words", "column"),
    [
        # brackets: point at the opening one
        ("y = f(x", "this '(' is never closed", 5),
        ("y = f(x, [1, 2)", "this '[' is not closed before the ')' at column 15", 9),
        ("y = f([x)]", "this '[' is not closed", 6),
        ("y = f(x))", "this ')' closes nothing", 8),
        ("y = f(x]", "this '(' is not closed before the ']'", 5),
        ("f(" * 12 + ")" * 12, "nest more than 10 deep", 21),
        # trailing junk, empty or missing parts
        ("y = f(x) z", "'z' comes after the call's closing ')'", 9),
        ("y = f(x)(y)", "comes after the call's closing ')'", 8),
        ("", "the step is empty; write NAME = call(args)", 0),
        ("   ", "the step is empty", 0),
        ("y = (x)", "the call's name is missing before '('", 4),
        ("(x)", "the call's name is missing", 0),
        ("y = ", "nothing comes after '='", 4),
        ("= f(x)", "the name before '=' is missing", 0),
        ("y = x", "'x' is not a call", 4),
        ("y = x + 1", "such as y = add(x, 1)", 6),
        ("y = 3", "'3' is not a call's name", 4),
        ("f(,x)", "an argument is missing before this ','", 2),
        ("f(x,,y)", "an argument is missing before this ','", 4),
        ("f([1,,2])", "a list entry is missing", 5),
        ("f(x=)", "the value after 'x=' is missing", 4),
        ("f(x y)", "a ',' is missing between 'x' and 'y'", 4),
        ("f([x y])", "a ',' is missing between 'x' and 'y'", 5),
        ("f(2 n)", "a ',' is missing between '2' and 'n'", 4),
        # '=' twice
        ("y = z = f(x)", "'=' appears twice", 6),
        ("y == f(x)", "'=' appears twice", 3),
        ("f(x, dim==0)", "'==' is not used", 9),
        ("f(x, dim=0=1)", "'=' can't come here", 10),
        # targets
        ("x.grad = f(x)", "a dotted name such as x.grad is made for you", 0),
        ("n = f(x)", "'n' can't name a value", 0),
        ("true = f(x)", "'true' can't name a value", 0),
        ("null = f(x)", "can't name a value", 0),
        ("float32 = f(x)", "can't name a value", 0),
        ("Shard = f(x)", "can't name a value", 0),
        ("f(x) = y", "before '=' comes one new value name", 0),
        ("y[0] = f(x)", "before '=' comes one new value name", 0),
        # attribute access on a call
        ("x.sum()", "write the value as the first argument, such as sum(x, ...)", 1),
        ("y = model.fc1.forward(x)", "such as forward(model.fc1, ...)", 13),
        ("y = torch.matmul(x, w)", "write matmul(...) without 'torch.'", 4),
        ("y = F.relu(x)", "without 'F.'", 4),
        # strings, characters
        ("y = to(x, 'float16')", "quotes aren't used in steps", 10),
        ('y = to(x, "float16")', "write names and words bare", 10),
        ("y = x @ w", "z = matmul(x, w)", 6),
        ("y = f({a: 1})", "a list is written with [ ]", 6),
        ("y = f(x); z = g(y)", "write one call per step", 8),
        ("y = f(x) # note", "'#' isn't used in steps", 9),
        ("f(x: 1)", "written with '='", 3),
        ("y = f(x) $", "'$' can't be used in a step", 9),
        ("y = f(\x00)", "'\\x00' can't be used in a step", 6),
        ("y = f(é)", "'é' can't be used", 6),
        ("f(.5)", "a number is written 0.5, not .5", 2),
        ("f(x.)", "'x.' ends with a '.'", 3),
        ("f(x..y)", "ends with a '.'", 3),
        ("f(2x)", "names start with a letter", 2),
        ("f(1e)", "is not a number or a name", 2),
        ("f(1e999)", "too large a number", 2),
        # values
        ("f(True)", "write true, in lower case, not True", 2),
        ("f(x, None)", "write null", 5),
        ("f(torch.float32)", "write the dtype as float32, without 'torch.'", 2),
        ("f(Shard)", "a placement is written with parentheses, such as Shard(0)", 2),
        ("f(Replicate)", "such as Replicate()", 2),
        ("f([Shard(x)])", "Shard takes one whole number", 3),
        ("f([Shard(1 2)])", "not Shard(12)", 3),
        ("f([Shard()])", "Shard takes one whole number", 3),
        ("f([Shard(0.5)])", "Shard takes one whole number", 3),
        ("f([Shard((0))])", "Shard takes one whole number", 3),
        ("f([Shard(1234567)])", "Shard takes one whole number", 3),
        ("f([Replicate(0)])", "Replicate takes nothing", 3),
        ("f([Partial(mean)])", "one of sum, avg, max, min", 3),
        ("f([shard(0)])", "'shard' is written Shard, with a capital letter", 3),
        ("f(relu(x))", "a call inside an argument", 2),
        ("f(x*2)", "does arithmetic on the value x", 2),
        ("f(x.grad+1)", "does arithmetic on the value x.grad", 2),
        ("f(0.5*n)", "sizes in n are whole numbers", 2),
        ("f(2**n)", "write n*n", 3),
        ("f(n/)", "ends too early", 2),
        ("f(n+true)", "'true' can't be part of a size expression", 4),
        ("f(n[0])", "a ',' is missing before '['", 3),
        ("f(x, dim=0, 1)", "put the plain ones first", 12),
        ("f(x, d=1, d=2)", "d= is given twice", 10),
        ("f(a.b=1)", "a keyword is one word", 2),
        ("true(x)", "'true' is not a call", 0),
    ],
)
def test_steps_that_are_refused(text, words, column):
    with pytest.raises(StepSyntaxError) as info:
        parse_step(text)
    assert words in info.value.message
    assert info.value.column == column
    assert f"(at column {column + 1})" in str(info.value)


def test_messages_suggest_the_form():
    for text in ("y = z = f(x)", "y = x", "(x)", ""):
        with pytest.raises(StepSyntaxError) as info:
            parse_step(text)
        assert "such as y = redistribute(x, [Replicate()])" in info.value.message


@pytest.mark.parametrize("value", [None, 3, ["y = f(x)"], {"do": "y = f(x)"}])
def test_a_step_must_be_text(value):
    with pytest.raises(StepSyntaxError, match="a step is text"):
        parse_step(value)


def test_overlong_step():
    with pytest.raises(StepSyntaxError, match="longer than 2000 characters"):
        parse_step("f(" + "x, " * 1000 + ")")


def test_reserved_words_cover_the_language():
    assert {"n", "true", "false", "null", "float32", "bool", "Shard", "Partial"} <= RESERVED


# --- placements with reductions -----------------------------------------------------------------


def test_partial_reductions():
    assert Placement("partial", reduce="sum") == Placement("partial") == P
    avg = Placement("partial", reduce="avg")
    assert (str(P), str(avg)) == ("Partial()", "Partial(avg)")
    assert (P.as_json(), avg.as_json()) == (["partial"], ["partial", "avg"])
    assert (P.reduce_op, avg.reduce_op, S0.reduce_op) == ("sum", "avg", None)
    for op in ("sum", "avg", "max", "min"):
        parsed = placements.parse(f"Partial({op})")
        assert parsed.reduce_op == op
        assert placements.parse(str(parsed)) == parsed
    assert placements.parse(" Partial( avg ) ") == avg
    with pytest.raises(ValueError, match="a Partial is written Partial"):
        placements.parse("Partial(mean)")
    with pytest.raises(ValueError, match="write Shard\\(0\\), Shard\\(-1\\), Replicate\\(\\)"):
        placements.parse("Replicate(sum)")
    with pytest.raises(ValueError):
        Placement("shard", 0, "avg")
    with pytest.raises(ValueError):
        Placement("partial", reduce="mean")


# --- fuzz ----------------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(
    [*list("abnxyz_019.,=()[]-+*/% \t\n'\"@#é"), "//", "Shard(", "Partial(", "true", "1e-3"]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(_ALPHABET, max_size=30).map("".join)))
def test_random_text_raises_only_step_syntax_errors(text):
    try:
        step = parse_step(text)
    except StepSyntaxError as exc:
        assert 0 <= exc.column <= len(text)
        assert exc.message
        return
    assert _parts(parse_step(format_step(step))) == _parts(step)


_IDENTS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in RESERVED
)
_NAMES = st.lists(_IDENTS, min_size=1, max_size=3).map(".".join)
_EXPRS = st.sampled_from(["2*n", "n/2", "(n+1)//2", "4*n+1", "n", "-n", "n - 1", "3*(n%2)"])
_PLACEMENTS = st.one_of(
    st.integers(-9, 9).map(lambda d: Placement("shard", d)),
    st.just(R),
    st.sampled_from(["sum", "avg", "max", "min"]).map(lambda op: Placement("partial", reduce=op)),
)
_SCALARS = st.one_of(
    _NAMES.map(Name),
    _EXPRS.map(Expr),
    st.sampled_from(DTYPES).map(DType),
    _PLACEMENTS,
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.none(),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
_STEPS = st.builds(
    lambda target, call, args, kwargs: Step(target, call, tuple(args), kwargs, ""),
    st.one_of(st.none(), _IDENTS),
    _IDENTS,
    st.lists(_VALUES, max_size=4),
    st.dictionaries(_IDENTS, _VALUES, max_size=3),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_STEPS, st.sampled_from(["", " ", "  ", "\t", "\n"]))
def test_valid_steps_round_trip(step, space):
    text = format_step(step)
    parsed = parse_step(text)
    assert _parts(parsed) == _parts(step)
    assert parsed.text == text
    spaced = space + text.replace(", ", f"{space},{space}") + space
    assert _parts(parse_step(spaced)) == _parts(step)
