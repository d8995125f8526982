"""BSSL relabelling against a PyTorch implementation written here: train-mode BN teachers on
half-batches, a weighted teacher mixture, CutMix applied to what the teacher sees."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn as tnn  # noqa: E402

from jdd import models  # noqa: E402
from jdd.data import augment  # noqa: E402
from jdd.labels import bssl, fkd  # noqa: E402
from tests.torch_parity import convert, randomise  # noqa: E402

HW, CLASSES = 16, 5


class TorchConvNet(tnn.Module):
  """The DD ConvNet (conv-BN-ReLU-avgpool x 2, linear) in plain torch, jdd's 'dd' layout."""

  def __init__(self, width):
    super().__init__()
    layers, cin = [], 3
    for _ in range(2):
      layers += [tnn.Conv2d(cin, width, 3, padding=1), tnn.BatchNorm2d(width), tnn.ReLU(),
                 tnn.AvgPool2d(2)]
      cin = width
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Linear(width * (HW // 4) ** 2, CLASSES)

  def forward(self, x):
    return self.classifier(self.features(x).flatten(1))


def torch_bssl(nets, weights, x_nchw, perm, box):
  """The reference's relabel for one batch, with the CutMix box and pairing given."""
  top, left, bottom, right = box
  mixed = x_nchw.clone()
  mixed[:, :, top:bottom, left:right] = x_nchw[perm][:, :, top:bottom, left:right]
  split = mixed.shape[0] // 2
  total = 0
  with torch.no_grad():
    for w, net in zip(weights, nets):
      net.train()
      out = torch.cat([net(mixed[:split]), net(mixed[split:])], 0)
      total = total + out * float(w)
  return total.numpy()


@pytest.fixture(scope="module")
def teachers():
  torch.manual_seed(0)
  nets, jax_models, variables = [], [], []
  for seed, width in enumerate((8, 6)):
    net = randomise(TorchConvNet(width), seed)
    model = models.build_model("convnet", CLASSES, width=width, depth=2)
    key = models.torch_key_fn("convnet", feature_hw=HW // 4)
    variables.append(convert(net, model, (HW, HW, 3), key, "convnet"))
    nets.append(net)
    jax_models.append(model)
  return nets, tuple(jax_models), tuple(variables)


def test_bssl_matches_torch_half_batches(teachers):
  nets, mods, variables = teachers
  x = np.random.default_rng(0).normal(size=(8, HW, HW, 3)).astype(np.float32)
  perm = np.array([3, 1, 0, 2, 7, 6, 5, 4])
  box = (2, 3, 11, 13)
  weights = bssl.mixture_weights(2, (1.0, 3.0))
  np.testing.assert_allclose(weights, np.exp([0.1, 0.3]) / np.exp([0.1, 0.3]).sum(), rtol=1e-6)
  want = torch_bssl(nets, weights, torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(perm),
                    box)
  mixed = augment.paste_box(jnp.asarray(x), jnp.asarray(perm), jnp.asarray(box))
  label = jax.jit(lambda m, ts: bssl.bssl_logits(mods, ts, m, num_splits=2, weights=weights))
  got = np.asarray(label(mixed, variables))
  scale = np.abs(want).max()
  np.testing.assert_allclose(got / scale, want / scale, atol=1e-4)
  # The half-batch statistics matter: one batch of 8, or eval mode, gives other labels.
  whole = np.asarray(bssl.bssl_logits(mods, variables, mixed, num_splits=1, weights=weights))
  assert np.abs(whole - want).max() > 1e-2 * scale
  evals = sum(w * np.asarray(m.apply(v, mixed, train=False))
              for w, m, v in zip(weights, mods, variables))
  assert np.abs(evals - want).max() > 1e-2 * scale
  # And CutMix reached the teacher: the un-mixed batch is labelled differently.
  plain = np.asarray(label(jnp.asarray(x), variables))
  assert np.abs(plain - want).max() > 1e-2 * scale


def test_split_points_and_weights():
  assert bssl.split_points(16, 2) == [0, 8, 16]
  assert bssl.split_points(5, 2) == [0, 2, 5]      # the reference's split at b // 2
  assert bssl.split_points(10, 2) == [0, 5, 10]
  with pytest.raises(ValueError, match="micro-batches"):
    bssl.split_points(2, 3)
  np.testing.assert_allclose(bssl.mixture_weights(4), [0.25] * 4)
  with pytest.raises(ValueError, match="3 teachers"):
    bssl.mixture_weights(3, (1.0, 2.0))


def test_relabel_fn_labels_the_augmented_batch(teachers):
  """The stored labels are the teacher's output on exactly the batch the student replays."""
  _, mods, variables = teachers
  cfg = ml_collections.ConfigDict(dict(crop="rrc", crop_scale=(0.08, 1.0), flip=True,
                                       mix="cutmix", mix_alpha=1.0))
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  images = np.random.default_rng(1).integers(0, 256, size=(8, HW, HW, 3), dtype=np.uint8)
  aug_key, order_key = jax.random.key(3), jax.random.key(4)
  weights = bssl.mixture_weights(2)
  labels = bssl.compute_soft_labels(mods, variables, images, epochs=2, batch_size=4,
                                    order_key=order_key, aug_key=aug_key, cfg=cfg, mean=mean,
                                    std=std, num_splits=2)
  assert labels.shape == (2, 2, 4, CLASSES) and labels.dtype == np.float16
  idx = fkd.batch_indices(order_key, 1, 8, 4)[1]
  # The reference side jitted too: op by op it compiles hundreds of tiny programs.
  x = jax.jit(lambda im: fkd.augmented_batch(aug_key, 1, 1, im, cfg=cfg, mean=mean, std=std))(
      jnp.asarray(images[idx]))
  want = jax.jit(lambda v, x: bssl.bssl_logits(mods, v, x, num_splits=2, weights=weights))(
      variables, x)
  np.testing.assert_allclose(labels[1, 1].astype(np.float32), np.asarray(want), rtol=2e-3,
                             atol=2e-3)
