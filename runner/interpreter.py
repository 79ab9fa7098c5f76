"""Runs the steps of a v1.1 case on an engine, and on the reference: plain CPU tensors.

Imported only inside a worker (it imports torch). The calls come from the allowlist that
``runner.calls`` checked before anything ran; here they are only carried out. An engine
supplies a :class:`Backend` (how to make inputs, how the DTensor calls map to its API, how
to read a value); the op table and the loop are shared, so every engine runs a case the
same way. The reference engine acts on global values: DTensor calls keep the value
(``to_local`` gives device 0's piece), and it records values, never judges them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .calls import DTENSOR_CALLS
from .protocol import (
    ErrorInfo,
    ForwardObservation,
    InputTensor,
    ReadJson,
    ReferenceCompare,
    StepJson,
    StepOutcome,
    StepsObservation,
    StepsRequest,
    ValueObservation,
)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def to_placement(spec: list) -> Any:
    """A placement on the wire (``["shard", d]``, ``["replicate"]``, ``["partial", op]``) as
    a torch placement object: what every engine passes to the DTensor API."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    if spec[0] == "shard":
        return Shard(spec[1])
    if spec[0] == "partial":
        return Partial(spec[1] if len(spec) > 1 else "sum")
    return Replicate()


def to_placements(raw: list) -> list:
    return [to_placement(p) for p in raw]


def placement_json(p: Any) -> list:
    """A torch placement object as the protocol writes it."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    if isinstance(p, Shard):
        return ["shard", int(p.dim)]
    if isinstance(p, Partial):
        op = str(getattr(p, "reduce_op", "sum"))
        return ["partial"] if op == "sum" else ["partial", op]
    if isinstance(p, Replicate):
        return ["replicate"]
    return [type(p).__name__]


class NoReference:
    """A reference value that can't be known (``to_local`` of an untracked value)."""


NO_REFERENCE = NoReference()


def error_info(exc: BaseException) -> ErrorInfo:
    return {
        "type": type(exc).__name__,
        "bases": [cls.__name__ for cls in type(exc).__mro__],
        "message": str(exc)[:2000],
    }


def make_input(shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    """Random values from the seed, never all zeros (the same on every engine)."""
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype]
    if dtype == "bool":
        x = torch.randint(0, 2, shape, generator=gen).bool()
        if x.numel():
            x.view(-1)[0] = True
    elif dtype.startswith("int"):
        x = torch.randint(1, 1000, shape, generator=gen, dtype=torch_dtype)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        x = torch.where(x == 0, torch.ones_like(x), x).to(torch_dtype)
    return x


def _reduce(fn: Callable) -> Callable:
    def call(t, dim=None, keepdim=False):
        if dim is None:
            return fn(t)
        return fn(t, dim=dim, keepdim=keepdim)

    return call


def _amax(t, dim=None, keepdim=False):
    return torch.amax(t, dim=() if dim is None else dim, keepdim=keepdim)


def _squeeze(t, dim=None):
    return torch.squeeze(t) if dim is None else torch.squeeze(t, dim)


# Ops: torch's own functions, with torch's argument order (DESIGN.md v1.1).
OPS: dict[str, Callable[..., Any]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "neg": torch.neg,
    "relu": torch.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "matmul": torch.matmul,
    "linear": F.linear,
    "sum": _reduce(torch.sum),
    "mean": _reduce(torch.mean),
    "amax": _amax,
    "softmax": lambda t, dim: F.softmax(t, dim=dim),
    "log_softmax": lambda t, dim: F.log_softmax(t, dim=dim),
    "transpose": torch.transpose,
    "t": torch.t,
    "permute": torch.permute,
    "reshape": torch.reshape,
    "flatten": lambda t, start_dim=0, end_dim=-1: torch.flatten(t, start_dim, end_dim),
    "unsqueeze": torch.unsqueeze,
    "squeeze": _squeeze,
    "cat": lambda tensors, dim=0: torch.cat(tensors, dim=dim),
    "clone": torch.clone,
    "detach": lambda t: t.detach(),
    "to": lambda t, dtype: t.to(DTYPES[dtype]),
    "ones_like": torch.ones_like,
    "zeros_like": torch.zeros_like,
}


def from_local_kwargs(kwargs: dict) -> dict:
    """DTensor.from_local wants shape and stride together: a spec gives the shape only,
    of a contiguous tensor, so the stride is the contiguous one."""
    shape = kwargs.get("shape")
    if shape is None:
        return kwargs
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return dict(kwargs, shape=torch.Size(shape), stride=tuple(reversed(stride)))


class Backend:
    """What an engine supplies: inputs, the DTensor and XLA calls, and reading values."""

    reference = False

    def __init__(self, req: StepsRequest):
        self.req = req
        self.model: Any = None  # a module case's model, as the engine distributed it
        self.mesh: Any = None  # the DeviceMesh the DTensor calls use (engines set it)
        # id -> (the tensor, kept so that its id stays its own; what was made of it): what
        # an engine reads of a value is made once per read point (once_per_read_point)
        self._made: dict[int, tuple[Any, Any]] = {}

    def forward(self, x: Any) -> Any:
        """model(x): the module's forward, on the engine's distributed module."""
        return self.model(x)

    def tensor(self, spec: InputTensor, data: torch.Tensor) -> Any:
        raise NotImplementedError

    def dtensor_call(self, step: StepJson, args: list, kwargs: dict) -> Any:
        """distribute_tensor, redistribute, to_local, full_tensor, from_local: the DTensor
        API itself, on this engine's mesh (``self.mesh``)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        name = step["call"]
        if kwargs.get("grad_placements") is not None:
            kwargs = dict(kwargs, grad_placements=to_placements(kwargs["grad_placements"]))
        if name == "distribute_tensor":
            return distribute_tensor(args[0], self.mesh, to_placements(args[1]), **kwargs)
        if name == "redistribute":
            return args[0].redistribute(self.mesh, to_placements(args[1]), **kwargs)
        if name == "to_local":
            return args[0].to_local(**kwargs)
        if name == "full_tensor":
            return args[0].full_tensor(**kwargs)
        if name == "from_local":
            return DTensor.from_local(
                args[0], self.mesh, to_placements(args[1]), **from_local_kwargs(kwargs)
            )
        raise ValueError(f"unknown DTensor call {name}")

    def xla_call(self, step: StepJson, args: list, kwargs: dict) -> Any:
        """mark_sharding, clear_sharding, sync: only engine xla has them."""
        raise NotImplementedError(f"{step['call']} needs torch_xla")

    def before_reads(self) -> None:
        """A read point begins: values may have changed since the last one, so what was
        made of them goes (an engine that overrides this calls it first, then makes its
        values readable: torch_xla.sync() on xla)."""
        self._made.clear()

    def once_per_read_point(self, tensor: Any, make: Callable[[Any], Any]) -> Any:
        """``make(tensor)``, made once per read point: observing a value and comparing it
        with the reference both need its global data (a 3 ms copy of a tiled tensor on
        xla, a collective on native)."""
        found = self._made.get(id(tensor))
        if found is None:
            found = self._made[id(tensor)] = (tensor, make(tensor))
        return found[1]

    def observe(self, value: Any, read: ReadJson) -> ValueObservation:
        raise NotImplementedError

    def snapshot(self, value: Any) -> Any:
        """The value as the reference keeps it (a detached CPU copy)."""
        raise NotImplementedError


XLA_CALLS = {"mark_sharding", "clear_sharding", "sync"}


def _lookup(values: dict[str, Any], name: str, backend: Backend | None = None) -> Any:
    """A value by name: a tensor or step result, a module parameter (``model.fc1.weight``),
    or the gradient of either (``NAME.grad``)."""
    if name in values:
        return values[name]
    if name.startswith("model.") and backend is not None and backend.model is not None:
        params = dict(backend.model.named_parameters())
        if name[len("model.") :] in params:
            return params[name[len("model.") :]]
    if name.endswith(".grad"):
        base = _lookup(values, name[: -len(".grad")], backend)
        if isinstance(base, NoReference) or not getattr(backend, "grads_known", True):
            return NO_REFERENCE
        grad = getattr(base, "grad", None)
        if grad is None:
            raise LookupError(f"{name} does not exist: no gradient reached it")
        return grad
    raise LookupError(f"{name} does not exist")


def _bind(arg: Any, values: dict[str, Any], backend: Backend | None = None) -> Any:
    if isinstance(arg, dict) and set(arg) == {"value"}:
        return _lookup(values, arg["value"], backend)
    if isinstance(arg, list):
        return [_bind(a, values, backend) for a in arg]
    return arg


def _has_no_reference(arg: Any) -> bool:
    if isinstance(arg, NoReference):
        return True
    return isinstance(arg, list) and any(_has_no_reference(a) for a in arg)


def _splits(step: StepJson, args: list) -> bool:
    """Does the call make a per-device value? from_local with a Shard or Partial (every
    device's share differs), or to_local of a piece smaller than the value."""
    if step["call"] == "from_local":
        return any(p[0] != "replicate" for p in args[1])
    if step["call"] == "to_local":
        piece = step.get("piece")
        return piece is None or list(piece["shape"]) != list(getattr(args[0], "shape", []))
    return False


def _sgd_step(model: Any, lr: float) -> None:
    """Every parameter p -= lr * p.grad, then its gradient is zeroed (DESIGN.md v1.1)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(p.grad * lr)
                p.grad.zero_()


def call(backend: Backend, step: StepJson, values: dict[str, Any]) -> Any:
    args = [_bind(a, values, backend) for a in step["args"]]
    kwargs = {k: _bind(v, values, backend) for k, v in step["kwargs"].items()}
    name = step["call"]
    if backend.reference and (_has_no_reference(args) or _has_no_reference(list(kwargs.values()))):
        return NO_REFERENCE
    if name in DTENSOR_CALLS:
        result = backend.dtensor_call(step, args, kwargs)
        if backend.reference:
            backend.per_device(result, args, kwargs, _splits(step, args))  # type: ignore[attr-defined]
        return result
    if name in XLA_CALLS:
        return backend.xla_call(step, args, kwargs)
    if name == "model":
        result = backend.forward(args[0])
        if backend.reference:
            backend.per_device(result, args, kwargs)  # type: ignore[attr-defined]
        return result
    if name == "sgd_step":
        _sgd_step(backend.model, args[0])
        return None
    if name == "zero_grad":
        for p in backend.model.parameters():
            p.grad = None
        return None
    if name == "backward":
        value, grad = args[0], kwargs.get("grad", args[1] if len(args) > 1 else None)
        if backend.reference and backend.per_device(value, args, kwargs):  # type: ignore[attr-defined]
            backend.grads_known = False  # type: ignore[attr-defined]
        value.backward(grad)
        return None
    result = OPS[name](*args, **kwargs)
    if backend.reference:
        backend.per_device(result, args, kwargs)  # type: ignore[attr-defined]
    return result


def run(backend: Backend, reference: dict[str, Any] | None = None) -> StepsObservation:
    """Run the request's steps; observe every read. Stops at the first step that raises.

    ``reference`` holds the reference engine's snapshots by read key (None: no reference
    comparison; the reference run itself passes None and gets its snapshots back under
    ``"snapshots"``).
    """
    req = backend.req
    began = time.perf_counter()
    values: dict[str, Any] = {}
    for spec in req["tensors"]:
        data = make_input(spec["shape"], spec["dtype"], spec["seed"])
        values[spec["name"]] = backend.tensor(spec, data)
    by_step: dict[int, list[ReadJson]] = {}
    at_end: list[ReadJson] = []
    for read in req["reads"]:
        (at_end if read["step"] is None else by_step.setdefault(read["step"], [])).append(read)
    outcomes: list[StepOutcome] = []
    snapshots: dict[str, Any] = {}
    views: dict[str, ValueObservation] = {}
    data: dict[str, torch.Tensor | None] = {}  # each read's global data, for {equals: ...}
    failed = False

    def read_now(read: ReadJson, value: Any) -> None:
        """Observe a value at its read point (settled point 2): a step's expectation right
        after the step, the named values after the last step."""
        key = read["key"]
        if backend.reference:
            snapshots[key] = backend.snapshot(value)
            return
        view = backend.observe(value, read)
        mine = value_tensor(backend, value)
        if reference is not None and key in reference:
            compared = compare(mine, reference[key], read["rtol"])
            if compared is not None:
                view["reference"] = compared
        views[key] = view
        data[key] = mine

    for step in req["steps"]:
        if backend.reference and step["error"]:
            break  # the reference does not run a step that must raise, nor what follows
        try:
            result = call(backend, step, values)
        except Exception as exc:
            outcomes.append({"index": step["index"], "error": error_info(exc)})
            failed = True
            break
        outcomes.append({"index": step["index"]})
        if step["error"]:
            break  # it should have raised; the steps after it don't run on any engine
        if step["target"]:
            values[step["target"]] = result
        reads = by_step.get(step["index"], [])
        if reads:
            backend.before_reads()
            for read in reads:
                if read["name"] is None:
                    read_now(read, result)
                else:  # a named value right after this step (a parameter after sgd_step)
                    try:
                        read_now(read, _lookup(values, read["name"], backend))
                    except LookupError:
                        continue
    # The end's reads are a read point of their own, after a step that raised too: a value
    # changed in place since the last read point (a parameter after sgd_step) must not be
    # served from that point's copies. A sync that fails after a failed step leaves the
    # values as the failure left them; their reads say what they can.
    try:
        backend.before_reads()
    except Exception:
        if not failed:
            raise
    ran = {o["index"] for o in outcomes if "error" not in o}
    for read in at_end:
        if read.get("made_by") is not None and read["made_by"] not in ran:
            continue  # its step never ran: its checks are "not made"
        try:
            value = _lookup(values, read["name"] or "", backend)
        except LookupError as exc:
            # A value that was made but has no .grad is a fact; one never made (a step
            # before it raised) is simply not observed: its checks are "not made".
            if (read["name"] or "").removesuffix(".grad") in values and not backend.reference:
                views[read["key"]] = {"missing": str(exc).strip("'\"")}
            continue
        read_now(read, value)
    if backend.reference:
        out: StepsObservation = {"steps": outcomes}
        out["snapshots"] = snapshots  # type: ignore[typeddict-unknown-key]
        return out
    for read in req["reads"]:
        key = read["key"]
        if read["equals"] and key in data:
            views[key]["equals"] = {
                other: _equal(data[key], data[other]) for other in read["equals"] if other in data
            }
    return {"values": views, "steps": outcomes, "seconds": time.perf_counter() - began}


def value_tensor(backend: Backend, value: Any) -> torch.Tensor | None:
    """The value's global data as a CPU tensor, or None when it is not a tensor."""
    getter = getattr(backend, "global_data", None)
    if getter is not None:
        return getter(value)
    return value.detach().cpu() if isinstance(value, torch.Tensor) else None


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(a, b))


def compare(value: torch.Tensor | None, ref: Any, rtol: float) -> ReferenceCompare | None:
    """Measure a value against the reference's snapshot (None: no reference value)."""
    if value is None or not isinstance(ref, torch.Tensor):
        return None
    if tuple(value.shape) != tuple(ref.shape):
        return {
            "shape": list(ref.shape),
            "same_shape": False,
            "max_abs_error": float("inf"),
            "max_excess": float("inf"),
            "finite": True,
        }
    a = value.detach().to(torch.float64)
    b = ref.detach().to(torch.float64)
    diff = (a - b).abs()
    finite = bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
    same_nan = bool(torch.equal(torch.isnan(a), torch.isnan(b)))
    diff = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(diff), diff)
    return {
        "shape": list(ref.shape),
        "same_shape": True,
        "max_abs_error": float(diff.max()) if diff.numel() else 0.0,
        "max_excess": float((diff - rtol * b.abs()).max()) if diff.numel() else 0.0,
        "finite": finite or same_nan,
    }


def describe(value: Any) -> ValueObservation:
    """What every engine reads of a value first: its type and bases; for a tensor its
    shape, dtype, requires_grad and is_leaf; for a DTensor its placements (or the error
    reading them raised)."""
    from torch.distributed.tensor import DTensor

    out: ValueObservation = {
        "type": type(value).__name__,
        "mro": [cls.__name__ for cls in type(value).__mro__],
    }
    if not isinstance(value, torch.Tensor):
        return out
    out.update(
        shape=list(value.shape),
        dtype=str(value.dtype).removeprefix("torch."),
        requires_grad=bool(value.requires_grad),
        is_leaf=bool(value.is_leaf),
    )
    if isinstance(value, DTensor):
        try:
            out["placements"] = [placement_json(p) for p in value.placements]
        except Exception as exc:
            out["placements_error"] = error_info(exc)
    return out


def module_fns(spec: Any, *, replicate_input: bool, src_data_rank: Any = 0) -> dict[str, Any]:
    """distribute_module's input_fn and output_fn for a module's input_placements and
    output_placements. With ``replicate_input``, an input with no input_placements is
    distributed as Replicate() on every mesh axis; ``src_data_rank`` is passed on to
    distribute_tensor when it is not torch's default (0)."""
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

    extra = {} if src_data_rank == 0 else {"src_data_rank": src_data_rank}

    def place(t: Any, mesh: Any, wanted: list) -> Any:
        if isinstance(t, DTensor):
            return t.redistribute(mesh, wanted)
        if isinstance(t, torch.Tensor):
            return distribute_tensor(t, mesh, wanted, **extra)
        return t

    fns: dict[str, Any] = {}
    raw = spec.get("input_placements")
    asked = to_placements(raw) if raw is not None else None
    if asked is not None or replicate_input:

        def input_fn(module: Any, inputs: Any, device_mesh: Any) -> Any:
            wanted = asked if asked is not None else [Replicate()] * device_mesh.ndim
            return tuple(place(t, device_mesh, wanted) for t in inputs)

        fns["input_fn"] = input_fn
    if spec.get("output_placements") is not None:
        out_wanted = to_placements(spec["output_placements"])

        def output_fn(module: Any, outputs: Any, device_mesh: Any) -> Any:
            return place(outputs, device_mesh, out_wanted)

        fns["output_fn"] = output_fn
    return fns


def forward_input(req: Any) -> torch.Tensor:
    """A module case's forward input, seeded by the case (token ids for an Embedding)."""
    gen = torch.Generator().manual_seed(req["seed"] + 1)
    first = req["layers"][0][1]
    shape = req["forward"]["input_shape"]
    if first["kind"] == "Embedding":
        return torch.randint(0, first["sizes"][0], shape, generator=gen)
    return torch.randn(shape, generator=gen)


def forward_report(got: torch.Tensor, want: torch.Tensor, rtol: float) -> ForwardObservation:
    """The sharded module's forward output against the CPU module's: shapes first (an
    output of another shape is never broadcast against the expected one)."""
    compared = compare(got, want, rtol)
    assert compared is not None
    return {
        "shape": list(got.shape),
        "expected_shape": list(want.shape),
        "max_abs_error": compared["max_abs_error"],
        "max_excess": compared["max_excess"],
        "finite": compared["finite"],
    }


class ReferenceBackend(Backend):
    """Plain CPU tensors; DTensor calls act on the global value (DESIGN.md settled point 5).

    ``to_local`` and ``from_local`` make per-device values: the global value is known
    (device 0's piece; every device's same piece), but a gradient through them is not,
    since every device adds its own share. After a backward through such a value, the
    reference has no gradients (their reference check is "not made").
    """

    reference = True

    def __init__(self, req: StepsRequest):
        super().__init__(req)
        self.local: set[int] = set()  # ids of per-device values and what was made from them
        self.grads_known = True
        if req.get("module") is not None:
            self.model = build_model(req)  # the same model, unsharded, on the CPU

    def per_device(self, result: Any, args: list, kwargs: dict, made_here: bool = False) -> bool:
        """Mark ``result`` per-device when it is made from one; says whether it is."""

        def tainted(arg: Any) -> bool:
            if isinstance(arg, list):
                return any(tainted(a) for a in arg)
            return id(arg) in self.local

        hit = made_here or tainted(args) or tainted(list(kwargs.values()))
        if hit and result is not None:
            self.local.add(id(result))
        return hit

    def tensor(self, spec: InputTensor, data: torch.Tensor) -> Any:
        return data.clone().requires_grad_(spec["requires_grad"])

    def dtensor_call(self, step: StepJson, args: list, kwargs: dict) -> Any:
        name, t = step["call"], args[0]
        if name == "distribute_tensor":
            return t.detach().clone().requires_grad_(t.requires_grad)  # a new leaf
        if name in ("redistribute", "full_tensor"):
            return t.view_as(t)  # the same global value, still in the graph
        if name == "to_local":
            piece = step.get("piece")
            if piece is None:
                return NO_REFERENCE  # placements not tracked: device 0's piece is unknown
            index = tuple(
                slice(o, o + s) for o, s in zip(piece["offset"], piece["shape"], strict=True)
            )
            return t[index]
        if name == "from_local":
            mesh = self.req["mesh"]
            out = t
            for axis, placement in enumerate(args[1]):
                if placement[0] == "shard":
                    out = torch.cat([out] * mesh[axis], dim=placement[1])
                elif placement[0] == "partial" and (placement[1:] or ["sum"])[0] == "sum":
                    out = out * mesh[axis]
            shape = kwargs.get("shape")
            if shape is not None and list(out.shape) != list(shape):
                return NO_REFERENCE
            return out
        raise ValueError(f"unknown DTensor call {name}")

    def xla_call(self, step: StepJson, args: list, kwargs: dict) -> Any:
        # XLA's annotations don't change values: the reference keeps the tensor.
        return args[0] if args else None

    def snapshot(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        return value


def build_model(req: StepsRequest) -> Any:
    """The case's module with its initial weights: every engine builds the same one."""
    from .engine_layers import build

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(req["module"]["seed"])
    try:
        return build(req["module"]["layers"])
    finally:
        torch.random.set_rng_state(gen_state)


def run_reference(req: StepsRequest) -> tuple[dict[str, Any], StepOutcome | None]:
    """The reference's snapshots by read key, and the step that raised there, if one did."""
    out = run(ReferenceBackend(req))
    raised = next((o for o in out["steps"] if "error" in o), None)
    return out["snapshots"], raised  # type: ignore[typeddict-item]
