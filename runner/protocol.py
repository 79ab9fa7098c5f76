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
    seed: int
    forward: NotRequired[ForwardRequest]
    case: NotRequired[str]
    n: NotRequired[int]


Request = TensorRequest | ModuleRequest


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
    global_shape: list[int]
    dtype: str
    requires_grad: bool  # read from global_tensor (the seed's reading, v1)
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


Observation = TensorObservation | ModuleObservation
