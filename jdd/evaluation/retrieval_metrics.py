"""Image-text retrieval recalls with BLIP's ranking semantics, and chunked score matrices.

Reference: `itm_eval` and `epoch_test` in `src/epoch.py` of zhangxin-xd/RepBlend and
silicx/LoRS_Distill, copied from BLIP's `train_retrieval.py`. Semantics carried over:

* Scores are (images x texts). TR@K (text retrieval, image queries): an image's rank is the
  BEST (smallest) rank among all of its captions (5 each; COCO has 10 test images with 6);
  the denominator is the number of images. IR@K (image retrieval, caption queries): a
  caption's rank is the rank of its one image; the denominator is the number of captions.
* A hit at K means rank < K (0-based). `r_mean` is the mean of the six recalls; results use
  BLIP's keys: txt_r1/5/10 = TR@K, img_r1/5/10 = IR@K, txt_r_mean, img_r_mean, r_mean (%).

Ties. BLIP ranks with `np.argsort(score)[::-1]`. NumPy's default argsort ('quicksort',
introsort or a SIMD sort depending on version and CPU) is not stable, so BLIP's order among
exactly equal scores is unspecified: on NumPy 2.4 here, tied entries already come out of
index order at 16 elements. jdd fixes the order to that of a STABLE ascending sort reversed,
`np.argsort(score, kind='stable')[::-1]`: among equal scores the item with the larger index
ranks first. So the 0-based rank of item j in a row s is

    #{k : s_k > s_j} + #{k > j : s_k == s_j},

computed here by counting, without sorting. Without ties this is exactly BLIP's rank.

Deliberate differences: BLIP keeps the top-128 scores per row and sets the rest to -100
(`epoch_test`); that cannot change a rank below 128 except through ties with a -100 filler, so
R@1/5/10 are computed from the full scores. Non-finite scores raise ValueError (BLIP's argsort
would silently rank NaN first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

KS = (1, 5, 10)


def _as_img2txt(img2txt: Mapping[int, Sequence[int]] | Sequence[Sequence[int]],
                num_images: int) -> list[np.ndarray]:
  if isinstance(img2txt, Mapping):
    img2txt = [img2txt[i] for i in range(num_images)]
  out = [np.asarray(t, np.int64).reshape(-1) for t in img2txt]
  if len(out) != num_images:
    raise ValueError(f"img2txt has {len(out)} images, scores have {num_images}")
  if any(t.size == 0 for t in out):
    raise ValueError("every image needs at least one caption in img2txt")
  return out


def _as_txt2img(txt2img: Mapping[int, int] | Sequence[int] | np.ndarray,
                num_texts: int) -> np.ndarray:
  if isinstance(txt2img, Mapping):
    txt2img = [txt2img[t] for t in range(num_texts)]
  out = np.asarray(txt2img, np.int64).reshape(-1)
  if out.shape != (num_texts,):
    raise ValueError(f"txt2img has {out.shape[0]} captions, scores have {num_texts}")
  return out


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f"{name} must be a 2-D score matrix, got shape {scores.shape}")
  if not np.isfinite(scores).all():
    raise ValueError(f"{name} has non-finite scores; ranking them would be arbitrary")
  return scores


def _ranks_of(rows: np.ndarray, targets: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Rank of each target column in its row (tie rule of the module docstring).

  rows (n, m); targets, valid (n, c): column indices and which of them are real.
  Returns (n, c) ranks, with invalid entries set to a rank past the end.
  """
  n, m = rows.shape
  safe = np.where(valid, targets, 0)
  target_scores = np.take_along_axis(rows, safe, axis=1)  # (n, c)
  greater = (rows[:, None, :] > target_scores[:, :, None]).sum(-1)
  later_ties = ((rows[:, None, :] == target_scores[:, :, None])
                & (np.arange(m)[None, None, :] > safe[:, :, None])).sum(-1)
  return np.where(valid, greater + later_ties, m)


def text_retrieval_ranks(scores_i2t: np.ndarray, img2txt, chunk: int = 256) -> np.ndarray:
  """TR: per image, the best 0-based rank among its captions (scores images x texts)."""
  scores = _check_scores(scores_i2t, "scores_i2t")
  caps = _as_img2txt(img2txt, scores.shape[0])
  width = max(t.size for t in caps)
  targets = np.zeros((len(caps), width), np.int64)
  valid = np.zeros((len(caps), width), bool)
  for i, t in enumerate(caps):
    if t.min() < 0 or t.max() >= scores.shape[1]:
      raise ValueError(f"img2txt[{i}] = {t.tolist()} is outside [0, {scores.shape[1]})")
    targets[i, :t.size], valid[i, :t.size] = t, True
  out = np.empty(scores.shape[0], np.int64)
  # Chunks bound the (chunk, captions per image, texts) comparison tensor.
  for s in range(0, scores.shape[0], chunk):
    e = min(s + chunk, scores.shape[0])
    out[s:e] = _ranks_of(scores[s:e], targets[s:e], valid[s:e]).min(axis=1)
  return out


def image_retrieval_ranks(scores_t2i: np.ndarray, txt2img, chunk: int = 1024) -> np.ndarray:
  """IR: per caption, the 0-based rank of its image (scores texts x images)."""
  scores = _check_scores(scores_t2i, "scores_t2i")
  target = _as_txt2img(txt2img, scores.shape[0])
  if target.size and (target.min() < 0 or target.max() >= scores.shape[1]):
    raise ValueError(f"txt2img values must be in [0, {scores.shape[1]})")
  out = np.empty(scores.shape[0], np.int64)
  for s in range(0, scores.shape[0], chunk):
    e = min(s + chunk, scores.shape[0])
    t = target[s:e, None]
    out[s:e] = _ranks_of(scores[s:e], t, np.ones_like(t, bool))[:, 0]
  return out


def recall_at(ranks: np.ndarray, k: int) -> float:
  """Percentage of queries whose 0-based rank is below k."""
  return 100.0 * float(np.mean(np.asarray(ranks) < k))


def retrieval_metrics(scores_i2t: np.ndarray, txt2img, img2txt,
                      scores_t2i: np.ndarray | None = None) -> dict[str, float]:
  """BLIP's `itm_eval` result dict from an (images x texts) score matrix.

  `scores_t2i` defaults to `scores_i2t.T` (BLIP passes both because of its top-k masking).
  `txt2img` / `img2txt` may be dicts (as the reference datasets build them) or sequences.
  """
  scores_i2t = np.asarray(scores_i2t)
  scores_t2i = scores_i2t.T if scores_t2i is None else np.asarray(scores_t2i)
  if scores_t2i.shape != scores_i2t.shape[::-1]:
    raise ValueError(f"scores_t2i shape {scores_t2i.shape} is not the transpose of "
                     f"{scores_i2t.shape}")
  tr = text_retrieval_ranks(scores_i2t, img2txt)
  ir = image_retrieval_ranks(scores_t2i, txt2img)
  out = {f"txt_r{k}": recall_at(tr, k) for k in KS}
  out.update({f"img_r{k}": recall_at(ir, k) for k in KS})
  out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in KS) / len(KS)
  out["img_r_mean"] = sum(out[f"img_r{k}"] for k in KS) / len(KS)
  out["r_mean"] = 0.5 * (out["txt_r_mean"] + out["img_r_mean"])
  return out


def score_matrix(image_embed, text_embed, logit_scale: float = 1.0,
                 chunk: int = 1024) -> np.ndarray:
  """(images x texts) scaled cosine similarities as host float32, computed in row chunks.

  Texts are normalised once and image rows are scored `chunk` at a time, so the device never
  holds more than chunk x texts scores (COCO's 5,000 x 25,010 float32 matrix is 500 MB). The
  scale does not change any rank; it is there to reproduce BLIP's numbers (1/tau). Plain
  jnp ops, not jitted: the driver decides what to compile.
  """
  u = jnp.asarray(image_embed, jnp.float32)
  v = jnp.asarray(text_embed, jnp.float32)
  if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
    raise ValueError(f"need (n, d) and (m, d) embeddings, got {u.shape} and {v.shape}")
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  scale = jnp.float32(logit_scale)
  out = np.empty((u.shape[0], v.shape[0]), np.float32)
  for s in range(0, u.shape[0], max(1, chunk)):
    block = u[s:s + chunk]
    block = block / jnp.linalg.norm(block, axis=-1, keepdims=True)
    out[s:s + block.shape[0]] = np.asarray(scale * (block @ v.T))
  return out
