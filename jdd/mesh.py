"""The device mesh and batch sharding, on one process or several.

One `data` axis over all devices; batches are split on it with `NamedSharding` and `jax.jit`
propagates the layout (no pmap). Statistics over a sharded batch are computed by plain
`jnp.mean` on the global array, so XLA inserts the all-reduce and results do not depend on the
device count.

With several processes (`jdd.distributed`) the mesh spans every process's devices
(`jax.devices()` is global) and `shard` builds the global array from the slices this process's
devices hold (`jax.make_array_from_callback`: each process places only its shard of the host
array); `shard_rows` goes further for batches read from disk: each process loads and augments
only the rows its devices hold. A sharded result is gathered back with `fetch` (all processes
get the whole array); fully replicated values (losses, metrics) are read as usual. The same
global program runs whether the devices belong to one process or to several, so a run over 2
processes x 1 device matches one process x 2 devices bit for bit (checked for the SRe2L and
RepBlend smoke configs, tests/test_multihost.py).

Every program of a run is compiled for the mesh: under `jax.set_mesh` (`jdd.run`) even an array
no stage shards is replicated over all devices. XLA compiles such a replicated program for 2
partitions through another pass pipeline than for one device (other fusions), so a run over 2
devices and one over 1 device can differ in the last float bits even where nothing is sharded
(docs/multihost.md, "Equal results").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  n = num_devices or len(jax.devices())
  if jax.process_count() > 1 and n != len(jax.devices()):
    from jdd.errors import ConfigError
    raise ConfigError.field("num_devices", num_devices,
                            f"0 (all {len(jax.devices())} devices of the {jax.process_count()} "
                            "processes): a multi-process mesh must hold every process's devices")
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
  sharding = NamedSharding(mesh, batch_spec(x.shape, mesh, axes))
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):   # typed keys: shard their data
    return jax.random.wrap_key_data(shard(jax.random.key_data(x), mesh, axes),
                                    impl=jax.random.key_impl(x))
  host = x if isinstance(x, np.ndarray) else np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def local_rows(n: int, mesh: jax.sharding.Mesh) -> np.ndarray:
  """The rows of an n-row batch sharded on axis 0 (`batch_spec`) that this process's devices
  hold, ascending: all of them with one process, or when n does not split over the devices."""
  sharding = NamedSharding(mesh, batch_spec((n,), mesh))
  if jax.process_count() == 1 or sharding.is_fully_replicated:
    return np.arange(n)
  held = {i for index in sharding.addressable_devices_indices_map((n,)).values()
          for i in range(*index[0].indices(n))}
  return np.array(sorted(held), dtype=np.int64)


def shard_rows(n: int, load, mesh: jax.sharding.Mesh):
  """An n-row batch sharded on axis 0 over the mesh, of which this process loads only its rows:
  `load(rows)` gets the ascending batch positions its devices hold (`local_rows`) and returns a
  host array (or a dict of them) with one entry per position; each device's slice is placed
  from it. Row i must depend on i alone (its own image, its own augmentation seed), so the
  global batch is the same whoever loads which rows. One process loads all n rows and places
  them as `shard` does."""
  rows = local_rows(n, mesh)
  local = load(rows)
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: shard(jnp.asarray(x), mesh), local)
  position = np.full(n, -1, np.int64)
  position[rows] = np.arange(len(rows))

  def place(x):
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)   # as jnp.asarray would
    if len(x) != len(rows):
      raise ValueError(f"load(rows) returned {len(x)} rows for {len(rows)} batch positions")
    shape = (n, *x.shape[1:])
    sharding = NamedSharding(mesh, batch_spec(shape, mesh))
    return jax.make_array_from_callback(
        shape, sharding, lambda index: x[position[np.arange(n)[index[0]]]])
  return jax.tree.map(place, local)


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def fetch(tree):
  """`jax.device_get` that also gathers arrays spread over several processes (every process
  receives the whole array)."""
  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)
  return jax.tree.map(get, tree)
