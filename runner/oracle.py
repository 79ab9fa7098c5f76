"""DTensor's layout rules in pure Python (no torch): what every device should hold.

Mirrors ``torch.distributed.tensor._utils._compute_local_shape_and_global_offset``:
each Shard placement chunks the current local size like ``torch.chunk`` (chunks of
ceil(L/k), the tail possibly short or empty), nested over mesh axes in mesh-dim order.
A zero-sized shard's offset is the dim's global size, as DTensor reports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .placements import Placement


@dataclass(frozen=True)
class ShardLayout:
    """Where one device's unpadded shard sits in the global tensor."""

    device: int
    coord: tuple[int, ...]
    shape: tuple[int, ...]
    offset: tuple[int, ...]


def chunk(size: int, chunks: int, index: int) -> tuple[int, int]:
    """Size and offset of chunk ``index`` when ``size`` is split like torch.chunk."""
    full = -(-size // chunks)
    start = full * index
    if start >= size:
        return 0, size
    return min(size, start + full) - start, start


def coordinate(device: int, mesh_shape: Sequence[int]) -> tuple[int, ...]:
    """Mesh coordinate of a device when devices fill the mesh in row-major order."""
    coord = []
    for extent in reversed(mesh_shape):
        device, rest = divmod(device, extent)
        coord.append(rest)
    return tuple(reversed(coord))


def shard_of(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    coord: Sequence[int],
    placements: Sequence[Placement],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Local shape and global offset on the device at ``coord``."""
    rank = len(global_shape)
    shape = list(global_shape)
    offset = [0] * rank
    for axis, placement in enumerate(placements):
        if placement.kind != "shard":
            continue
        dim = placement.normalized(rank).dim
        size, local = chunk(shape[dim], mesh_shape[axis], coord[axis])
        shape[dim] = size
        offset[dim] = global_shape[dim] if size == 0 else offset[dim] + local
    return tuple(shape), tuple(offset)


def layout(
    global_shape: Sequence[int], mesh_shape: Sequence[int], placements: Sequence[Placement]
) -> list[ShardLayout]:
    """Every device's shard, in device order."""
    out = []
    for device in range(math.prod(mesh_shape)):
        coord = coordinate(device, mesh_shape)
        shape, offset = shard_of(global_shape, mesh_shape, coord, placements)
        out.append(ShardLayout(device, coord, shape, offset))
    return out


def padded_shape(
    global_shape: Sequence[int], mesh_shape: Sequence[int], placements: Sequence[Placement]
) -> tuple[int, ...]:
    """XLA's padded tile: every shard is zero-padded to ceil(L / ways) per tensor dim."""
    rank = len(global_shape)
    ways = [1] * rank
    for axis, placement in enumerate(placements):
        if placement.kind == "shard":
            ways[placement.normalized(rank).dim] *= mesh_shape[axis]
    return tuple(-(-size // k) for size, k in zip(global_shape, ways, strict=True))
