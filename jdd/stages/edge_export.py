"""EDGE's sampling and export, and the exported pairs read back for evaluation.

One image per seeded real training caption (`edge.sample_pairs`), `edge.captions_per_image`
captions each (`jdd.caption_synthesis`), written as the caption-JSON layout the loaders read
(`images/<i>.png`, `annotations/<dataset>_train.json`, a grid) through `jdd.export`, so the
export is replaced whole and carries a byte manifest. The evaluation reads the export back as
anyone would: PNGs resized to the dataset's size and cleaned captions.

Two checks go through the same writer and reader (`edge.checks`, issue 15): the no-fine-tuning
ablation samples the same queries with the pretrained U-Net (W/no_finetune), and the oracle
writes the real images of the same query captions (W/oracle), which must score like a random
real subset if the export and evaluation path are sound.

With several processes the sampler's batches are dealt over them (batch k, keyed by k alone, on
process k mod N; `jdd.distributed.spread_arrays`) and every process receives every image.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdd import caption_synthesis, checkpoint, distributed, export, reporting
from jdd.data.captions import (ANNOTATION_STEMS, CLIP_MEAN, CLIP_STD, load_image, pre_caption,
                               read_train_annotations)
from jdd.evaluation import retrieval
from jdd.loop import RunContext
from jdd.methods import edge
from jdd.models.retrieval import encode_features, normalize_images
from jdd.stages import edge_backends, image_text
from jdd.stages.edge_backends import EdgeSetup
from jdd.stages.image_text import Evaluator


def sampler_config(config) -> edge.SamplerConfig:
  sc = config.edge.sampler
  return edge.SamplerConfig(scheduler=str(sc.scheduler), steps=int(sc.steps),
                            guidance_scale=float(sc.guidance_scale), eta=float(sc.eta),
                            height=int(sc.size), width=int(sc.size))


def sample_and_export(ctx: RunContext, setup: EdgeSetup, unet_vars, texts: dict,
                      image_embed, name: str = "export", label: str = "edge") -> dict:
  """Samples the pairs with `unet_vars`, adds captions, writes W/<name> (jdd.export); returns
  the manifest. `name='export'` is EDGE's set; the no-fine-tuning ablation passes the
  pretrained U-Net and its own folder (same seed, queries and sampler)."""
  config, data = ctx.config, ctx.data
  ec = config.edge
  final = os.path.join(ctx.workdir, name)
  export.recover(final)
  if export.is_complete(final):
    print(f"[sample] {name}/manifest.json exists: skipped", flush=True)
    return export.read_manifest(final)
  sampler = sampler_config(config)
  edge_backends.check_latent_size(setup.models, sampler.height)
  captions = list(data.train.captions)
  seed = int(ec.sample_seed)
  t = time.time()
  # Batch k on process k mod N, gathered to all (None with one process).
  spread = distributed.array_spreader((int(ec.sample_batch), sampler.height, sampler.width, 3),
                                      np.float32)
  images, prompts, idx = edge.sample_pairs(
      unet_vars, setup.frozen, captions, lambda c: setup.tokenize(c)[0], int(ec.pairs), seed,
      models=setup.models, sampler=sampler, batch_size=int(ec.sample_batch),
      scaling_factor=setup.scaling_factor, spread=spread)
  sample_seconds = time.time() - t
  images_u8 = np.round(images * 255.0).astype(np.uint8)
  k = int(ec.captions_per_image)
  req = caption_synthesis.SynthesisRequest(
      images=images_u8, prompts=prompts, prompt_ids=idx, k=k, train_captions=captions,
      train_text=texts["train"], image_embed=image_embed,
      train_joint=None if image_embed is None else image_embed.text_bank())
  caps = caption_synthesis.synthesize(str(ec.synthesizer), req)
  fields = {"method": label, "seed": seed, "query_caption_ids": [int(i) for i in idx],
            "prompts": prompts, "sampler": dataclasses.asdict(sampler),
            "scaling_factor": setup.scaling_factor, "synthesizer": str(ec.synthesizer),
            "sample_seconds": round(sample_seconds, 1)}
  return write_pairs(ctx, name, images_u8, caps, fields)


def write_pairs(ctx: RunContext, name: str, images_u8: np.ndarray, caps: list[list[str]],
                fields: dict) -> dict:
  """Images i with captions caps[i] as W/<name>: `images/<i>.png`, the caption JSON the loaders
  read, a grid and the manifest with the budget (jdd.export: staged, swapped in whole)."""
  data = ctx.data
  stem = ANNOTATION_STEMS.get(data.name, data.name)
  ann_rel = f"annotations/{stem}_train.json"
  caption_bytes = sum(len(c.encode()) for cs in caps for c in cs)

  def build(entries: dict) -> dict:
    files = {rel: e for rel, e in entries.items() if rel.startswith("images/") or rel == ann_rel}
    image_bytes = sum(v["bytes"] for r, v in files.items() if r.startswith("images/"))
    return {
        "dataset": data.name, "num_pairs": len(annotation), **fields,
        "budget": caption_synthesis.budget(len(images_u8), len(caps[0]), image_bytes,
                                           caption_bytes),
        "raw_uint8_image_bytes": int(images_u8.nbytes), "annotation": ann_rel,
        "image_root": ".", "files": files,
        "reload": f"jdd.data.captions.read_train_annotations(<{name}>/" + ann_rel + ", 30); "
                  f"image paths are <{name}> joined with each entry's 'image'"}

  annotation = []
  with export.staged(ctx.workdir, name) as out:
    for i, img in enumerate(images_u8):
      rel = f"images/{i}.png"
      reporting.save_png(os.path.join(out, rel), img)
      annotation += [{"image": rel, "caption": c, "image_id": f"{fields['method']}_{i}"}
                     for c in caps[i]]
    export.save_json(out, ann_rel, annotation)
    reporting.save_png(os.path.join(out, "grid.png"),
                       reporting.image_grid(images_u8[:64], nrow=min(8, len(images_u8))))
    out.manifest = build
  return export.read_manifest(os.path.join(ctx.workdir, name))


def oracle_export(ctx: RunContext, source: str = "export", name: str = "oracle") -> dict:
  """The oracle check of EDGE's pipeline: the REAL training images of W/<source>'s query
  captions, each with the captions W/<source> gave its generated image, written and read back
  through the same path (`write_pairs`, `exported_pairs`). Real images of seeded random
  captions are a random real subset, so they must score like one; if they do not, the export
  or evaluation path is at fault, not the generator."""
  final = os.path.join(ctx.workdir, name)
  export.recover(final)
  if export.is_complete(final):
    print(f"[oracle] {name}/manifest.json exists: skipped", flush=True)
    return export.read_manifest(final)
  data = ctx.data
  manifest = export.read_manifest(os.path.join(ctx.workdir, source))
  ids = np.asarray(manifest["query_caption_ids"], np.int64)
  caps: list[list[str]] = [[] for _ in ids]
  for entry in checkpoint.read_json(os.path.join(ctx.workdir, source, manifest["annotation"])):
    caps[int(os.path.splitext(os.path.basename(entry["image"]))[0])].append(entry["caption"])
  images_u8 = data.load_images("train", data.train.image_index[ids], dtype="uint8")
  return write_pairs(ctx, name, images_u8, caps,
                     {"method": "oracle_real_queries", "seed": manifest["seed"],
                      "query_caption_ids": [int(i) for i in ids], "prompts": manifest["prompts"],
                      "source": f"the real train images of {source}/'s query captions"})


class JointImageEmbed:
  """The loss CLIP's image tower (for 'image_retrieval' caption synthesis), offline only."""

  def __init__(self, setup: EdgeSetup, image_size: int):
    clip, frozen = setup.models.clip, setup.frozen["clip"]
    self._img = jax.jit(lambda v, x: clip.apply(v, x, method="image_features"))
    self._txt = jax.jit(lambda v, ids: clip.apply(v, ids, method="text_features"))
    self.frozen, self.size = frozen, image_size

  def __call__(self, images_u8):
    x = normalize_images(images_u8, CLIP_MEAN, CLIP_STD)
    return np.concatenate([np.asarray(self._img(self.frozen, jnp.asarray(x[s:s + 64])))
                           for s in range(0, len(x), 64)])

  def text_bank(self):
    n = self.frozen["table"].shape[0]
    ids = np.arange(n, dtype=np.int32)[:, None]
    return np.concatenate([np.asarray(self._txt(self.frozen, jnp.asarray(ids[s:s + 1024])))
                           for s in range(0, n, 1024)])


def exported_pairs(ctx: RunContext, ev: Evaluator, manifest: dict, texts: dict,
                   name: str = "export"):
  """The pairs of W/<name> as the evaluator's PairSet, read back from the folder (what
  anyone evaluating the export sees: PNGs resized to the dataset's size, cleaned captions)."""
  config, data = ctx.config, ctx.data
  model, backbone_vars, features = ev.model, ev.backbone_vars, ev.features
  edir = os.path.join(ctx.workdir, name)
  pairs = read_train_annotations(os.path.join(edir, manifest["annotation"]), data.max_words[0])
  imgs = np.stack([load_image(os.path.join(edir, p), data.image_size, "uint8")
                   for p in pairs.image_paths])
  inputs = (encode_features(model, backbone_vars, imgs, mean=CLIP_MEAN, std=CLIP_STD)
            if features else normalize_images(imgs, CLIP_MEAN, CLIP_STD))
  return retrieval.PairSet(inputs[pairs.image_index],
                           caption_embeddings(config, list(pairs.captions), data, texts))


def caption_embeddings(config, caps, data, texts) -> np.ndarray:
  """Text embeddings of exported captions: the cached ones for real training captions, the
  text encoder for new strings (e.g. from an LLM synthesizer)."""
  lookup = {c: i for i, c in enumerate(data.train.captions)}
  unknown = sorted({c for c in caps if c not in lookup})
  extra = {}
  if unknown:
    from jdd import text_features
    tc = config.text_encoder
    path = image_text.offline_text_encoder_path() if tc.path == "minilm" else tc.path
    enc = text_features.TextEncoder(path, pooling=tc.pooling, batch_size=int(tc.batch_size))
    cleaned = [pre_caption(c, data.max_words[0]) for c in unknown]
    extra = dict(zip(unknown, enc.encode(cleaned)))
  return np.stack([texts["train"][lookup[c]] if c in lookup else extra[c] for c in caps])
