"""Streaming inputs for the image-text methods: images decoded, resized, augmented and
normalised per batch, so host memory holds a few batches, not a split.

Why: holding every train image of a split as float32 costs 17.5 GB for Flickr30K and 68 GB for
COCO at 224 px (the trained-backbone methods, MTT-VL and LoRS, train on pixels), and even the
frozen-backbone path read the whole split as uint8 before encoding it. Here

* `ImageFiles` reads the images of one split per batch in a thread pool (PIL releases the GIL
  while decoding and resampling): the references' test transform (bicubic resize, CLIP
  normalisation; `jdd.data.captions.load_image`) or their train transform
  (`jdd.data.randaugment`), each image's draws from its own seed, so the thread count and the
  scheduling never change a pixel. Splits whose resized uint8 images fit `cache_bytes` (the
  generated offline set) keep them after the first read instead of decoding again.
* `Rows` is a read-only, array-like table over a loader: `rows[idx]` loads those rows,
  `rows.subset(idx)` is a lazy view, `np.asarray(rows)` loads everything (explicitly). The
  evaluator, the baselines, the expert trainer and the encoder pre-training index it like an
  array, so the same code serves pixels streamed from disk and frozen features memory-mapped
  from `W/features/<split>.npy` (`feature_rows`).
* `Prefetcher` computes the loop's batch s + 1, s + 2, ... in a background thread while step s
  runs; a batch is a pure function of (key, s), so prefetching, killing and resuming never
  change what a step sees.
* `encode_to_file` runs a frozen backbone over a split batch by batch and writes the features
  into a memory-mapped .npy (renamed into place when complete), so the features never sit in
  memory whole either.

Deterministic order and augmentation: every draw derives from the run's keys (`fold_in`,
`jdd.loop.host_rng`); the stages say which key (`jdd.stages.experts`, `jdd.stages.distill`).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from jdd.data import randaugment
from jdd.data.captions import CLIP_MEAN, CLIP_STD

DEFAULT_CACHE_BYTES = 1 << 29   # 512 MiB of resized uint8 images: the offline sets fit


def default_threads() -> int:
  return max(1, min(32, os.cpu_count() or 1))


def _normalized_values(v: np.ndarray, mean, std) -> np.ndarray:
  x = v.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


_LUTS: dict = {}


def normalize(x: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 NHWC -> float32, /255, then (x - mean) / std: the references' ToTensor + Normalize,
  bit for bit what `jdd.data.captions.load_image` returns. Read from a (channel, value) table
  of those same float32 operations: one gather instead of four passes over the batch."""
  key = (tuple(mean), tuple(std))
  if key not in _LUTS:
    levels = np.arange(256, dtype=np.uint8)[:, None].repeat(len(mean), 1)
    _LUTS[key] = np.ascontiguousarray(_normalized_values(levels, mean, std).T)
  lut = _LUTS[key]
  return lut[np.arange(lut.shape[0]), x]


def _resized(path: str, size: int) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.uint8)


class ImageFiles:
  """The images of one split, read per batch (see the module docstring).

  `threads`: decoding threads (0: one per CPU, at most 32). `cache_bytes`: keep the resized
  uint8 images after their first read when the whole split fits (0: never).
  """

  def __init__(self, paths: Sequence[str], image_size: int, *, mean=CLIP_MEAN, std=CLIP_STD,
               threads: int = 0, cache_bytes: int = DEFAULT_CACHE_BYTES):
    self.paths = list(paths)
    self.image_size = int(image_size)
    self.mean, self.std = tuple(mean), tuple(std)
    self.threads = int(threads) or default_threads()
    per_image = self.image_size ** 2 * 3
    self._cache = None
    if cache_bytes and len(self.paths) * per_image <= cache_bytes:
      # np.empty touches no page: memory grows only as images are read.
      self._cache = np.empty((len(self.paths), self.image_size, self.image_size, 3), np.uint8)
      self._cached = np.zeros(len(self.paths), bool)
    self._pool = None
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.paths)

  def _map(self, fn: Callable[[int], None], count: int) -> None:
    if count <= 1 or self.threads <= 1:
      for k in range(count):
        fn(k)
      return
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads,
                                                           thread_name_prefix="jdd-images")
    list(self._pool.map(fn, range(count)))

  def _check(self, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self.paths)):
      raise IndexError(f"image rows must be in [0, {len(self.paths)}), got "
                       f"{rows.min()}..{rows.max()}")
    return rows

  def uint8(self, rows) -> np.ndarray:
    """The test transform (bicubic resize to image_size x image_size), uint8 NHWC."""
    rows = self._check(rows)
    out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)

    def fill(k):
      r = rows[k]
      if self._cache is not None and self._cached[r]:
        out[k] = self._cache[r]
        return
      out[k] = _resized(self.paths[r], self.image_size)
      if self._cache is not None:
        self._cache[r] = out[k]
        self._cached[r] = True
    self._map(fill, len(rows))
    return out

  def normalized(self, rows) -> np.ndarray:
    """The references' test transform: float32 NHWC, CLIP-normalised."""
    return normalize(self.uint8(rows), self.mean, self.std)

  def augmented_uint8(self, rows, seeds: Sequence[int],
                      transform: randaugment.TrainTransform) -> np.ndarray:
    """The train transform of each row, image k's draws from `default_rng(seeds[k])`."""
    rows = self._check(rows)
    if len(seeds) != len(rows):
      raise ValueError(f"need one seed per row: {len(seeds)} seeds for {len(rows)} rows")
    if transform.size != self.image_size:
      raise ValueError(f"the train transform crops to {transform.size} px but the split is read "
                       f"at {self.image_size} px")
    out = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)

    def fill(k):
      out[k] = randaugment.transform_file(self.paths[rows[k]], int(seeds[k]), transform)
    self._map(fill, len(rows))
    return out

  def augmented(self, rows, seeds, transform) -> np.ndarray:
    return normalize(self.augmented_uint8(rows, seeds, transform), self.mean, self.std)

  def close(self) -> None:
    with self._lock:
      if self._pool is not None:
        self._pool.shutdown(wait=True)
        self._pool = None


def image_seeds(rng: np.random.Generator, count: int) -> np.ndarray:
  """One seed per image of a batch, drawn from the batch's key-derived generator."""
  return rng.integers(0, 2 ** 63, size=count, dtype=np.int64)


class Rows:
  """A read-only table whose rows are loaded on access (see the module docstring).

  `load(base_rows) -> array` reads rows of the underlying table; `index` (optional) maps this
  view's rows to the table's. `source` is what the rows come from (an `ImageFiles`, or the
  memory-mapped array of features), for callers that need more than the test transform.
  """

  def __init__(self, load: Callable[[np.ndarray], np.ndarray], length: int,
               row_shape: tuple[int, ...], dtype, *, source=None, index=None):
    self._load, self._length = load, int(length)
    self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
    self.source = source
    self._index = None if index is None else np.asarray(index, np.int64)

  def __len__(self) -> int:
    return self._length if self._index is None else len(self._index)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self),) + self.row_shape

  @property
  def ndim(self) -> int:
    return 1 + len(self.row_shape)

  def _base(self, key) -> np.ndarray:
    n = len(self)
    if isinstance(key, slice):
      rows = np.arange(n)[key]
    else:
      rows = np.asarray(key)
      if rows.dtype == bool:
        if rows.shape != (n,):
          raise IndexError(f"boolean index must have shape ({n},), got {rows.shape}")
        rows = np.flatnonzero(rows)
      rows = rows.astype(np.int64)
      if rows.size and (rows.min() < -n or rows.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
      rows = np.where(rows < 0, rows + n, rows)
    return rows if self._index is None else self._index[rows]

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self._load(self._base(np.array([key])))[0]
    if isinstance(key, tuple):
      raise IndexError("Rows takes one row index (int, slice or index array)")
    rows = self._base(key)
    if rows.size == 0:
      return np.zeros((0,) + self.row_shape, self.dtype)
    return self._load(rows)

  def subset(self, key) -> "Rows":
    """A lazy view of some rows (nothing is read)."""
    return Rows(self._load, self._length, self.row_shape, self.dtype, source=self.source,
                index=self._base(key))

  def base_rows(self) -> np.ndarray:
    """This view's rows in the underlying table."""
    return np.arange(self._length) if self._index is None else self._index.copy()

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)

  def batches(self, batch_size: int, prefetch: int = 2):
    """(start, rows[start:start + batch_size]) in order, read `prefetch` batches ahead."""
    starts = list(range(0, len(self), batch_size))
    with Prefetcher(lambda k: self[starts[k]:starts[k] + batch_size], len(starts),
                    prefetch) as ahead:
      for k, s in enumerate(starts):
        yield s, ahead.get(k)

  def __repr__(self) -> str:
    return f"Rows(shape={self.shape}, dtype={self.dtype}, source={type(self.source).__name__})"


def pixel_rows(files: ImageFiles) -> Rows:
  """The split's test-transform pixels, float32 CLIP-normalised, read per access."""
  s = files.image_size
  return Rows(files.normalized, len(files), (s, s, 3), np.float32, source=files)


def uint8_rows(files: ImageFiles) -> Rows:
  s = files.image_size
  return Rows(files.uint8, len(files), (s, s, 3), np.uint8, source=files)


def feature_rows(path: str) -> Rows:
  """Features memory-mapped from a .npy file: rows are read from the page cache on access."""
  table = np.load(path, mmap_mode="r")
  return Rows(lambda rows: np.asarray(table[rows]), len(table), table.shape[1:], table.dtype,
              source=table)


class Prefetcher:
  """`fn(s)` for s = next, next + 1, ... up to `end`, `depth` ahead, in one background thread.

  `get(s)` returns `fn(s)`: from the queue when s is the next step (the loop's case), computed
  now otherwise (after a seek, the queue restarts at s + 1). At most `depth` results wait.
  """

  def __init__(self, fn: Callable[[int], object], end: int, depth: int = 2):
    self.fn, self.end, self.depth = fn, int(end), max(0, int(depth))
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jdd-prefetch")
    self._ahead: dict[int, concurrent.futures.Future] = {}

  def get(self, s: int):
    fut = self._ahead.pop(s, None)
    if fut is None:
      self._drop()
      out = self.fn(s)
    else:
      out = fut.result()
    for t in range(s + 1, min(s + 1 + self.depth, self.end)):
      if t not in self._ahead:
        self._ahead[t] = self._pool.submit(self.fn, t)
    return out

  def _drop(self) -> None:
    for fut in self._ahead.values():
      fut.cancel()
    for fut in self._ahead.values():
      if not fut.cancelled():
        try:
          fut.result()
        except Exception:   # a stale batch's error is not this step's
          pass
    self._ahead.clear()

  def close(self) -> None:
    self._drop()
    self._pool.shutdown(wait=True)

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def encode_to_file(encode: Callable[[np.ndarray], np.ndarray], rows: Rows, path: str,
                   batch_size: int = 256, prefetch: int = 2) -> Rows:
  """`encode` (a jitted frozen backbone: normalised pixels -> features) over every row, written
  batch by batch into `path` (.npy, memory-mapped; `path`.tmp until complete, then renamed).
  The last batch is padded to `batch_size`, so the forward compiles once. Returns its rows."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npy"
  out = None
  n = len(rows)
  for start, x in rows.batches(batch_size, prefetch):
    k = len(x)
    if k < batch_size and n > batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - k, 0)])
    f = np.asarray(encode(x))[:k]
    if out is None:
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n,) + f.shape[1:])
    out[start:start + k] = f
  if out is None:
    raise ValueError(f"no rows to encode into {path}")
  out.flush()
  del out
  os.replace(tmp, path)
  return feature_rows(path)
