"""Caption synthesis for generated image-text pairs: k captions per distilled image.

Reference: EDGE's `caption_synthesis_gpt.py` (gpt-4o-mini describes each generated image, k - 1
completions; the original prompt caption stays first), `caption_synthesis_llava.py` (LLaVA-1.5
describes the image) and `caption_synthesis_llama.py` (Llama paraphrases the caption, no image),
as summarised in shared/research/edge_method.md §1.4. Every script duplicates each image k times,
one copy per caption, so the pair count is k x N while the unique images stay N.

jdd's interface is a plain dict from a name to a function

    synthesize(request: SynthesisRequest) -> list[list[str]]   # per image, k captions

with the original prompt caption first. No network service is called from jdd: the hosted /
local LLM variants plug in by adding an entry (e.g. a function that posts each PNG to a chat
API). The offline implementations registered here need nothing but what the run already has:

* 'prompt'          k = 1: the prompt caption only (EDGE without synthesis).
* 'text_neighbours' the prompt plus its k - 1 nearest distinct real training captions in the
                    frozen text encoder's space: a paraphrase by retrieval (the Llama variant's
                    role, which also never looks at the image).
* 'image_retrieval' the prompt plus the k - 1 real training captions whose joint embedding is
                    closest to the generated image's (the loss CLIP's image and text towers):
                    captioning by retrieval (the GPT-4o-mini / LLaVA variants' role, which read
                    the image).

Deliberate difference: retrieved captions are real training captions, so they carry no
information outside the training split, which is what an offline stand-in must guarantee.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SynthesisRequest:
  """What a synthesizer may read.

  images: (N, H, W, 3) uint8 generated images; prompts: their N prompt captions;
  k: captions per image wanted (the prompt included); train_captions: the real training captions
  (cleaned); train_text: their frozen text-encoder embeddings (len(train_captions), D);
  image_embed: (N, H, W, 3) uint8 -> (N, E) joint-space image embeddings, and train_joint:
  (len(train_captions), E) joint-space caption embeddings (both only for 'image_retrieval');
  prompt_ids: the prompts' indices in train_captions.
  """
  images: np.ndarray
  prompts: Sequence[str]
  prompt_ids: np.ndarray
  k: int
  train_captions: Sequence[str]
  train_text: np.ndarray | None = None
  image_embed: Callable[[np.ndarray], np.ndarray] | None = None
  train_joint: np.ndarray | None = None


def _normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _top_distinct(scores: np.ndarray, captions: Sequence[str], prompt: str, k: int) -> list[str]:
  """The prompt, then the best-scoring captions whose strings differ from every one so far."""
  out = [prompt]
  for j in np.argsort(-scores, kind="stable"):
    if len(out) == k:
      break
    if captions[j] not in out:
      out.append(captions[j])
  if len(out) < k:
    raise ValueError(f"only {len(out)} distinct captions available, {k} asked for")
  return out


def prompt_only(req: SynthesisRequest) -> list[list[str]]:
  if req.k != 1:
    raise ValueError(f"synthesizer 'prompt' gives one caption per image, k={req.k} asked for; "
                     "use 'text_neighbours' or 'image_retrieval'")
  return [[p] for p in req.prompts]


def text_neighbours(req: SynthesisRequest) -> list[list[str]]:
  if req.train_text is None:
    raise ValueError("'text_neighbours' needs train_text (the text-encoder embeddings)")
  bank = _normalise(req.train_text)
  query = bank[np.asarray(req.prompt_ids)]
  scores = query @ bank.T
  return [_top_distinct(s, req.train_captions, p, req.k) for s, p in zip(scores, req.prompts)]


def image_retrieval(req: SynthesisRequest) -> list[list[str]]:
  if req.image_embed is None or req.train_joint is None:
    raise ValueError("'image_retrieval' needs image_embed and train_joint (the loss CLIP)")
  scores = _normalise(req.image_embed(req.images)) @ _normalise(req.train_joint).T
  return [_top_distinct(s, req.train_captions, p, req.k) for s, p in zip(scores, req.prompts)]


SYNTHESIZERS: dict[str, Callable[[SynthesisRequest], list[list[str]]]] = {
    "prompt": prompt_only,
    "text_neighbours": text_neighbours,
    "image_retrieval": image_retrieval,
}


def synthesize(name: str, req: SynthesisRequest) -> list[list[str]]:
  """Runs the registered synthesizer `name` and checks its output's shape."""
  if name not in SYNTHESIZERS:
    raise ValueError(f"caption synthesizer {name!r} is not one of {sorted(SYNTHESIZERS)}")
  if req.k < 1:
    raise ValueError(f"captions per image must be >= 1, got {req.k}")
  out = SYNTHESIZERS[name](req)
  if len(out) != len(req.prompts) or any(len(c) != req.k for c in out):
    raise ValueError(f"synthesizer {name!r} must return {req.k} captions for each of "
                     f"{len(req.prompts)} images")
  if any(c[0] != p for c, p in zip(out, req.prompts)):
    raise ValueError(f"synthesizer {name!r} must keep the prompt caption first")
  return out


def budget(num_images: int, k: int, image_bytes: int, caption_bytes: int) -> dict:
  """The pair-budget accounting the manifest states (EDGE's scripts leave it implicit)."""
  return {"unique_images": int(num_images), "captions_per_image": int(k),
          "pairs": int(num_images * k), "image_bytes": int(image_bytes),
          "caption_bytes": int(caption_bytes),
          "note": "each image is stored once and paired with k captions; a pair budget of P "
                  "counted as images needs P images, counted as pairs P / k images"}
