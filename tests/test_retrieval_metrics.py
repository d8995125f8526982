"""BLIP ranking semantics of jdd.evaluation.retrieval_metrics against a direct loop."""

import numpy as np
import pytest

from jdd.evaluation.retrieval_metrics import (
    image_retrieval_ranks,
    retrieval_metrics,
    score_matrix,
    text_retrieval_ranks,
)


def blip_itm_eval(scores_i2t, scores_t2i, txt2img, img2txt, kind="stable"):
  """BLIP's itm_eval written as a plain loop; `kind` is the argsort used (BLIP: default)."""
  ranks = np.zeros(scores_i2t.shape[0])
  for index, score in enumerate(scores_i2t):
    inds = np.argsort(score, kind=kind)[::-1]
    ranks[index] = min(np.where(inds == i)[0][0] for i in img2txt[index])
  tr = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
  ranks = np.zeros(scores_t2i.shape[0])
  for index, score in enumerate(scores_t2i):
    inds = np.argsort(score, kind=kind)[::-1]
    ranks[index] = np.where(inds == txt2img[index])[0][0]
  ir = [100.0 * np.mean(ranks < k) for k in (1, 5, 10)]
  out = {"txt_r1": tr[0], "txt_r5": tr[1], "txt_r10": tr[2],
         "img_r1": ir[0], "img_r5": ir[1], "img_r10": ir[2],
         "txt_r_mean": np.mean(tr), "img_r_mean": np.mean(ir)}
  out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
  return out


def _maps(captions_per_image):
  img2txt, txt2img, t = {}, {}, 0
  for i, c in enumerate(captions_per_image):
    img2txt[i] = list(range(t, t + c))
    for j in range(t, t + c):
      txt2img[j] = i
    t += c
  return txt2img, img2txt, t


@pytest.fixture(scope="module")
def fixed_problem():
  # 40 images, one of them (image 7) with six captions, like COCO's test split.
  counts = [5] * 40
  counts[7] = 6
  txt2img, img2txt, n_txt = _maps(counts)
  rng = np.random.default_rng(1234)
  scores = rng.normal(size=(40, n_txt))  # float64: no accidental ties
  # Make true pairs a bit more likely to be near the top so recalls are not all ~0.
  for t, i in txt2img.items():
    scores[i, t] += 1.5
  return scores, txt2img, img2txt


def test_matches_blip_without_ties(fixed_problem):
  scores, txt2img, img2txt = fixed_problem
  assert len(np.unique(scores)) == scores.size  # no ties: every argsort agrees
  got = retrieval_metrics(scores, txt2img, img2txt)
  for kind in ("stable", "quicksort"):
    want = blip_itm_eval(scores, scores.T, txt2img, img2txt, kind=kind)
    assert got == pytest.approx(want, abs=1e-12)
  assert 0 < got["txt_r1"] < 100 and 0 < got["img_r1"] < 100


def test_matches_stable_blip_with_exact_ties(fixed_problem):
  scores, txt2img, img2txt = fixed_problem
  tied = np.round(scores * 2) / 2  # a handful of distinct values: ties everywhere
  tied[7] = 0.0  # the six-caption image ties with every text
  tied[:, img2txt[3]] = 0.0  # image 3's captions tie with everything in their columns
  got = retrieval_metrics(tied, txt2img, img2txt)
  want = blip_itm_eval(tied, tied.T, txt2img, img2txt, kind="stable")
  assert got == pytest.approx(want, abs=1e-12)
  # And per-query ranks, not just aggregated recalls.
  tr = text_retrieval_ranks(tied, img2txt)
  for i, caps in img2txt.items():
    inds = np.argsort(tied[i], kind="stable")[::-1]
    assert tr[i] == min(np.where(inds == c)[0][0] for c in caps)
  ir = image_retrieval_ranks(tied.T, txt2img)
  for t, i in txt2img.items():
    assert ir[t] == np.where(np.argsort(tied[:, t], kind="stable")[::-1] == i)[0][0]


def test_small_hand_computed_case():
  # 2 images, image 0 has texts {0, 1}, image 1 has text {2}.
  scores = np.array([[0.1, 0.9, 0.5],
                     [0.7, 0.2, 0.7]])
  txt2img, img2txt = [0, 0, 1], [[0, 1], [2]]
  tr = text_retrieval_ranks(scores, img2txt)
  # Image 0: text 1 is first -> 0. Image 1: texts 0 and 2 tie at 0.7; the larger index (2)
  # ranks first under the stable-reversed rule -> 0.
  assert tr.tolist() == [0, 0]
  ir = image_retrieval_ranks(scores.T, txt2img)
  # text 0: image 1 (0.7) beats image 0 (0.1) -> 1; text 1 -> 0; text 2: 0.7 vs 0.5 -> 0.
  assert ir.tolist() == [1, 0, 0]
  m = retrieval_metrics(scores, txt2img, img2txt)
  assert m["txt_r1"] == 100.0 and m["img_r1"] == pytest.approx(200 / 3)
  assert m["img_r5"] == 100.0
  assert m["r_mean"] == pytest.approx((100 + (200 / 3 + 100 + 100) / 3) / 2)


def test_rejects_bad_inputs():
  scores = np.zeros((2, 3))
  with pytest.raises(ValueError, match="non-finite"):
    retrieval_metrics(np.array([[np.nan, 0, 0], [0, 0, 0]]), [0, 0, 1], [[0, 1], [2]])
  with pytest.raises(ValueError, match="img2txt"):
    retrieval_metrics(scores, [0, 0, 1], [[0, 1]])
  with pytest.raises(ValueError, match="txt2img"):
    retrieval_metrics(scores, [0, 1], [[0, 1], [2]])
  with pytest.raises(ValueError, match="transpose"):
    retrieval_metrics(scores, [0, 0, 1], [[0, 1], [2]], scores_t2i=scores)


def test_score_matrix_chunks_match_dense():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
  want = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ \
      (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T / 0.07
  for chunk in (3, 7, 100):
    got = score_matrix(img, txt, logit_scale=1 / 0.07, chunk=chunk)
    assert got.dtype == np.float32 and got.shape == (7, 11)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
