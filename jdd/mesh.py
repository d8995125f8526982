"""The device mesh and batch sharding.

One `data` axis over all devices; batches are split on it with `NamedSharding` and `jax.jit`
propagates the layout (no pmap). Statistics over a sharded batch are computed by plain
`jnp.mean` on the global array, so XLA inserts the all-reduce and results do not depend on the
device count.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  n = num_devices or len(jax.devices())
  # Auto axis types: with jax 0.10's Explicit default, grad through sharded code needs set_mesh.
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def batch_spec(shape: tuple[int, ...], mesh: jax.sharding.Mesh, axes=(0,)) -> P:
  """Shards the first of `axes` that the device count divides; replicates otherwise."""
  n = mesh.shape["data"]
  for axis in axes:
    if axis < len(shape) and shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = "data"
      return P(*spec)
  return P()


def shard(x, mesh: jax.sharding.Mesh, axes=(0,)):
  return jax.device_put(x, NamedSharding(mesh, batch_spec(x.shape, mesh, axes)))


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))
