"""torch_xla 2.9's HLO sharding string for a DTensor layout, predicted in pure Python (no torch).

What ``torch_xla._XLAC._get_xla_sharding_spec(dist.global_tensor)`` reads after
``distribute_tensor(x, DeviceMesh("xla", np.arange(n).reshape(mesh_shape)), placements)``.
torch_xla turns the placements into a partition spec (tensor dim -> the mesh axes that shard
it) and the mesh into a tile assignment by transposing it so that the used axes come first, in
tensor-dim order, and the unused axes follow; XLA then prints it. Mesh axes of size 1 change no
tile and are dropped, which is how XLA normalises the assignment.

A tensor dim sharded over several mesh axes is predicted as DTensor means it (nested chunks,
major to minor in mesh order), not as torch_xla 2.9 does it (it keeps only the last axis):
the prediction is the expected value a spec checks against.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from .placements import Placement

REPLICATED = "{replicated}"


def predict(mesh_shape: Sequence[int], placements: Sequence[Placement], rank: int) -> str:
    """HLO sharding string of a ``rank``-dim tensor distributed over ``mesh_shape``.

    Raises ValueError for Partial (torch_xla refuses it), for a Shard dim outside the tensor,
    and when the placements do not match the mesh.
    """
    mesh = [int(e) for e in mesh_shape]
    if len(placements) != len(mesh):
        raise ValueError(f"{len(placements)} placements for a {len(mesh)}-D mesh")
    if any(e < 1 for e in mesh):
        raise ValueError(f"mesh shape {tuple(mesh)} has an empty axis")
    # Mesh axes sharding each tensor dim, in mesh order: DTensor nests them major to minor.
    axes_of: list[list[int]] = [[] for _ in range(rank)]
    for axis, placement in enumerate(placements):
        if placement.kind == "partial":
            raise ValueError("torch_xla cannot distribute Partial(); there is no sharding string")
        if placement.kind != "shard":
            continue
        dim = placement.normalized(rank).dim
        if dim is None or not 0 <= dim < rank:
            raise ValueError(f"{placement} on a {rank}-D tensor")
        if mesh[axis] > 1:  # a size-1 axis splits nothing; XLA drops it
            axes_of[dim].append(axis)
    used = [axis for axes in axes_of for axis in axes]
    if not used:
        return REPLICATED
    unused = [a for a in range(len(mesh)) if a not in used and mesh[a] > 1]
    tiles = [math.prod(mesh[a] for a in axes) for axes in axes_of]
    replicas = math.prod(mesh[a] for a in unused)
    if replicas > 1:
        tiles.append(replicas)
    # torch_xla transposes the id mesh to (used..., unused...) and XLA reads it row-major:
    # that is the devices sorted by their permuted coordinate. product() walks the mesh
    # row-major, so enumerate() pairs each coordinate with its device id.
    order = used + unused
    coords = itertools.product(*(range(e) for e in mesh))
    ids = sorted(enumerate(coords), key=lambda entry: tuple(entry[1][a] for a in order))
    devices = ",".join(str(i) for i, _ in ids)
    suffix = " last_tile_dim_replicate" if replicas > 1 else ""
    return f"{{devices=[{','.join(map(str, tiles))}]{devices}{suffix}}}"


def predict_or_none(
    mesh_shape: Sequence[int], placements: Sequence[Placement], rank: int
) -> str | None:
    """Like ``predict``, but None when a placement is Partial (callers skip the check)."""
    if any(p.kind == "partial" for p in placements):
        return None
    return predict(mesh_shape, placements, rank)


def placements_from_spec(
    spec: str,
    mesh_shape: Sequence[int],
    rank: int,
    prefer: Sequence[Placement] | None = None,
) -> tuple[Placement, ...] | None:
    """DTensor placements on this mesh whose predicted string is ``spec`` (None: none does).

    For a plain tensor that XLA annotated (mark_sharding, or an op's propagated sharding):
    every candidate is predicted and compared, Replicate first, so that an axis of size 1
    reads as Replicate(). At most (rank + 1) ** mesh rank candidates: 64 for a 3-D mesh.
    """
    # Several placements give the same string (a Shard over an axis of size 1 is a
    # Replicate): the ones asked for win when they fit, so n=1 reads back as asked.
    if prefer is not None and len(prefer) == len(mesh_shape):
        try:
            if predict(mesh_shape, prefer, rank) == spec:
                return tuple(p.normalized(rank) for p in prefer)
        except ValueError:
            pass
    options = [Placement("replicate")] + [Placement("shard", d) for d in range(rank)]
    for choice in itertools.product(options, repeat=len(mesh_shape)):
        try:
            if predict(mesh_shape, choice, rank) == spec:
                return tuple(choice)
        except ValueError:
            continue
    return None
