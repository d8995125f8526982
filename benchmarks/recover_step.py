"""Times one SRe2L recover step: ResNet-18 (CIFAR stem), batch 100, 32x32, teacher in eval mode.

    python benchmarks/recover_step.py [--iters 10] [--batch 100]

Prints jdd's seconds per step and, when torch is installed, the same step in PyTorch (a
torchvision-layout ResNet-18 with the CIFAR stem written here in plain torch, BN hooks as in
SRe2L, Adam(0.5, 0.9), one crop+flip+roll per batch), and their ratio.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np


def bench_jdd(batch, iters):
  from jdd import models
  from jdd.methods import sre2l
  model = models.build_model("resnet18", 100, stem="cifar")
  variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
  hp = sre2l.RecoverHParams(iterations=1000, lr=0.25, r_bn=0.01, first_bn_multiplier=10.0,
                            random_resized_crop=True, crop_scale=(0.08, 1.0), flip=True,
                            jitter=4, jitter_symmetric=False, mean=(0.4914, 0.4822, 0.4465),
                            std=(0.2023, 0.1994, 0.2010))
  gids = jnp.arange(1, dtype=jnp.int32)
  batch_ = {"targets": jnp.arange(batch, dtype=jnp.int32)[None] % 100, "group_ids": gids}
  state = sre2l.init(jax.random.key(1), gids, batch, (32, 32, 3), hp)
  step = jax.jit(functools.partial(sre2l.step, model=model, hp=hp))
  t = time.perf_counter()
  state, m = step(state, batch_, jax.random.key(0), variables)
  jax.block_until_ready(state.images)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for i in range(iters):
    state, m = step(state, batch_, jax.random.key(i + 1), variables)
  jax.block_until_ready(state.images)
  return (time.perf_counter() - t) / iters, compile_s


def bench_torch(batch, iters):
  import torch
  from torch import nn
  import torch.nn.functional as F

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                 nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else None)

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return F.relu(out + (self.down(x) if self.down is not None else x))

  layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
  for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
    cin = cout
  model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 100))
  model.eval()
  losses = []

  def hook(module, inputs, _):
    x = inputs[0]
    mean, var = x.mean([0, 2, 3]), x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
    losses.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

  for mod in model.modules():
    if isinstance(mod, nn.BatchNorm2d):
      mod.register_forward_hook(hook)
  x = torch.randn(batch, 3, 32, 32, requires_grad=True)
  y = torch.arange(batch) % 100
  opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)

  def step():
    losses.clear()
    i, j = np.random.randint(0, 9, 2)
    xa = F.interpolate(x[:, :, i:i + 24, j:j + 24], size=(32, 32), mode="bilinear",
                       align_corners=False)
    xa = torch.roll(torch.flip(xa, (3,)), shifts=(2, 3), dims=(2, 3))
    out = model(xa)
    loss = F.cross_entropy(out, y) + 0.01 * (10 * losses[0] + sum(losses[1:]))
    opt.zero_grad()
    loss.backward()
    opt.step()

  step()
  t = time.perf_counter()
  for _ in range(iters):
    step()
  return (time.perf_counter() - t) / iters, torch.__version__


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--batch", type=int, default=100)
  a = p.parse_args()
  dev = jax.devices()[0]
  s, c = bench_jdd(a.batch, a.iters)
  print(f"jdd   recover step  ResNet-18 CIFAR, batch {a.batch}, 32x32 on {dev.platform}: "
        f"{s:.3f} s/step (compile {c:.1f} s)")
  try:
    ts, version = bench_torch(a.batch, a.iters)
  except ImportError:
    print("torch not installed: PyTorch comparison skipped")
    return
  print(f"torch recover step  same setting (torch {version}, CPU): {ts:.3f} s/step")
  print(f"ratio torch/jdd: {ts / s:.2f}x")


if __name__ == "__main__":
  main()
