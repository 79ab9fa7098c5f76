"""The worker protocol, written down once: what a request holds and what an engine observes.

Torch-free on purpose: the pytest process (expand builds requests, the checker reads
observations) and the engine inside the worker both import these types. Everything is
plain JSON-able data; one request and one reply travel per line.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

# A placement on the wire: ["shard", dim] | ["replicate"] | ["partial"]
PlacementJson = list


class TensorRequest(TypedDict):
    """Distribute one random tensor (seeded) with these placements."""

    op: Literal["tensor"]
    mesh: list[int]
    placements: list[PlacementJson]  # one per mesh axis, Shard dims already non-negative
    shape: list[int]
    dtype: str
    requires_grad: bool
    seed: int
    case: NotRequired[str]  # "FILE::ID", for messages and test-only fault injection
    n: NotRequired[int]


class LayerJson(TypedDict):
    kind: str
    sizes: list[int]
    bias: bool
    options: NotRequired[dict]  # every other argument, torch's defaults filled in


class ForwardRequest(TypedDict):
    input_shape: list[int]
    rtol: float


class ModuleRequest(TypedDict):
    """Build a Sequential of ``layers`` and place exactly the parameters in ``params``.

    The shard rules were matched once, by expand: the engine never matches names itself.
    """

    op: Literal["module"]
    mesh: list[int]
    layers: list[tuple[str, LayerJson]]
    params: dict[str, list[PlacementJson]]  # parameter name -> placements (non-negative dims)
    partition: bool  # False (no shard: rules): distribute_module without a partition function
    input_placements: list[PlacementJson] | None  # distribute_module's input_fn
    output_placements: list[PlacementJson] | None  # distribute_module's output_fn
    seed: int
    forward: NotRequired[ForwardRequest]
    case: NotRequired[str]
    n: NotRequired[int]


class ErrorInfo(TypedDict):
    """An exception raised by the engine's call, by class name (with its bases)."""

    type: str
    bases: list[str]
    message: str


class ShardObservation(TypedDict):
    """One device's piece: unpadded and padded shape, where it starts, and its data."""

    device: int
    shape: list[int]
    padded_shape: list[int]
    offset: list[int]
    extent: list[int]
    replica_id: int
    values_equal: bool  # the piece equals the slice of the input it claims


class TensorObservation(TypedDict, total=False):
    """What distribute_tensor gave. Either ``error`` alone, or every other field."""

    error: ErrorInfo
    type: str
    placements: list[PlacementJson] | None  # as the object reports them (None: it can't)
    global_shape: list[int]
    dtype: str
    requires_grad: bool  # xla: read from global_tensor (the seed's reading); native: the DTensor
    is_leaf: bool
    sharding_spec: str
    shards: list[ShardObservation]
    seconds: float


class ParamObservation(TypedDict, total=False):
    sharding_spec: str  # "" when the parameter carries no annotation
    shape: list[int]
    device: str
    shards: list[ShardObservation]  # only for the parameters the request placed


class ForwardObservation(TypedDict):
    shape: list[int]
    expected_shape: list[int]
    max_abs_error: float
    max_excess: float  # max(|xla - cpu| - rtol * |cpu|): compared with atol
    finite: bool


class ModuleObservation(TypedDict, total=False):
    """What distribute_module gave. Either ``error`` alone, or every other field."""

    error: ErrorInfo
    type: str
    params: dict[str, ParamObservation]
    forward: ForwardObservation


# --- v1.1: steps --------------------------------------------------------------------


class InputTensor(TypedDict):
    """A named input of a steps case, made before the steps (random, seeded)."""

    name: str
    shape: list[int]
    dtype: str
    placements: list[PlacementJson] | None  # None: a plain tensor (on the engine's device)
    requires_grad: bool
    seed: int


class StepJson(TypedDict):
    """One resolved step: a call from the allowlist with JSON-able arguments.

    An argument ``{"value": NAME}`` names a value; placements are PlacementJson lists;
    sizes are already numbers for this n.
    """

    index: int
    line: int
    target: str | None
    call: str
    args: list
    kwargs: dict
    error: bool  # the step is expected to raise: the reference skips it; later steps don't run
    # What the reference engine needs beyond the call: for to_local of a tracked value,
    # device 0's piece as {"offset": [...], "shape": [...]} (DTensor's layout).
    piece: NotRequired[dict]


class ReadJson(TypedDict):
    """A value to observe: ``name`` at the end of the steps, or the result of step ``step``."""

    key: str  # "NAME" (at the end) or "@INDEX" (right after step INDEX)
    name: str | None
    step: int | None
    rtol: float  # the relative tolerance the reference comparison is measured with
    equals: list[str]  # keys of other reads this value is compared with exactly
    made_by: int | None  # the step that makes the value (None: an input)


class StepsModule(TypedDict):
    """A module case's model for its steps: built, then distribute_module'd."""

    layers: list[tuple[str, LayerJson]]
    params: dict[str, list[PlacementJson]]  # the placed parameters (rules matched by expand)
    partition: bool  # False: distribute_module without a partition function
    seed: int  # torch.manual_seed before building: the same initial weights everywhere
    input_placements: list[PlacementJson] | None
    output_placements: list[PlacementJson] | None


class StepsRequest(TypedDict):
    op: Literal["steps"]
    module: StepsModule | None
    mesh: list[int]
    mesh_names: list[str] | None
    tensors: list[InputTensor]
    steps: list[StepJson]
    reads: list[ReadJson]
    reference: bool  # run the reference engine and compare every read with it
    case: NotRequired[str]
    n: NotRequired[int]


class ReferenceCompare(TypedDict):
    """An engine's value against the reference engine's, as measured (the checker judges)."""

    shape: list[int]  # the reference value's shape
    same_shape: bool
    max_abs_error: float
    max_excess: float  # max(|value - ref| - rtol * |ref|): compared with atol by the checker
    finite: bool


class ValueObservation(TypedDict, total=False):
    """What an engine holds for one value at its read point."""

    type: str  # the exact class name: XLAShardedTensor, DTensor, Tensor
    mro: list[str]  # the class and its bases, for instance_of
    shape: list[int]
    dtype: str
    requires_grad: bool
    is_leaf: bool
    placements: list[PlacementJson]  # from the object's .placements (a DTensor-typed value)
    placements_error: ErrorInfo  # .placements raised
    sharding_spec: str  # XLA only; "" when the value carries no annotation
    shards: list[ShardObservation]  # each device's piece; values_equal against the value
    reference: ReferenceCompare  # absent when the reference has no such value
    equals: dict[str, bool]  # read key -> equal exactly (same shape and values)
    missing: str  # the value does not exist (for example x.grad when no grad flowed)


class StepOutcome(TypedDict, total=False):
    index: int
    error: ErrorInfo  # the step raised (expected or not)


class StepsObservation(TypedDict, total=False):
    values: dict[str, ValueObservation]  # by read key
    steps: list[StepOutcome]  # every step that ran, in order
    reference_error: StepOutcome  # the reference engine raised: the spec is wrong
    seconds: float


Request = TensorRequest | ModuleRequest | StepsRequest
Observation = TensorObservation | ModuleObservation | StepsObservation
