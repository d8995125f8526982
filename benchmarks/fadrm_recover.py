"""Recover seconds per image for FADRM and FADRM+, in jdd and in an equivalent PyTorch loop.

    python benchmarks/fadrm_recover.py [--iters 3] [--cifar-batch 100] [--imagenet-batch 4]

Settings (FADRM's scripts, §5.3 of the research notes): 2000 steps per image batch, so
seconds per image = seconds per step x 2000 / batch. CIFAR: ResNet-18 (CIFAR stem), 4 stages
at 32 px. ImageNet: ResNet-18 (torchvision layout), stages 200/224/200/224, timed at both
resolutions and averaged (half the steps run at each). FADRM+ alternates teachers every step;
jdd has no DenseNet/ShuffleNet/MobileNet yet (issue 4), so the benchmark's FADRM+ round-robin
is ResNet-18 + ResNet-50, in both frameworks. Per step: RandomResizedCrop to the stage size +
flip (one box per batch) + roll, CE + 0.01 x BN-statistics loss (first BN x10) through the
eval-mode teacher, Adam(0.5, 0.9) under the cosine, per-channel clip. Random teacher weights
(speed does not depend on them). `--dtype bfloat16` times jdd's mixed-precision option (the
torch loop then runs under autocast to bfloat16); on CPU fp32 is the meaningful setting.
The paper reports 0.47 s (FADRM) and 1.09 s (FADRM+) per image on one RTX 4090 at ImageNet.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

TOTAL_STEPS = 2000
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _hp(resolutions, jitter, dtype):
  from jdd.methods import fadrm
  return fadrm.RecoverHParams(
      resolutions=resolutions, budgets=(TOTAL_STEPS // len(resolutions),) * len(resolutions),
      lr=0.25, alpha=0.5, r_bn=0.01, first_bn_multiplier=10.0, random_resized_crop=True,
      crop_scale=(0.08, 1.0), flip=True, jitter=jitter, mean=MEAN, std=STD, compute_dtype=dtype)


def bench_jdd(archs, stem, full, resolutions, batch, iters, dtype):
  """Mean seconds per step over `iters` x M steps at each distinct resolution."""
  from jdd import models
  from jdd.methods import fadrm
  mods = tuple(models.build_model(a, 1000 if stem == "imagenet" else 100, stem=stem)
               for a in archs)
  teachers = tuple(models.init_variables(m, jax.random.key(i), (full, full, 3))
                   for i, m in enumerate(mods))
  hp = _hp(resolutions, 32 if stem == "imagenet" else 4, dtype)
  classes = 1000 if stem == "imagenet" else 100
  b = {"targets": (jnp.arange(batch, dtype=jnp.int32) % classes)[None],
       "group_ids": jnp.zeros((1,), jnp.int32)}
  step = jax.jit(lambda s, bt, k, t: fadrm.step(s, bt, k, t, models=mods, hp=hp))
  patches = jax.random.uniform(jax.random.key(9), (1, batch, full, full, 3), minval=-1, maxval=1)
  per_res, compile_s = [], 0.0
  for res in sorted(set(resolutions)):
    state = fadrm.init(patches, hp)
    state = fadrm.enter_stage(state, hp, fadrm.Stage(0, 0, 1, res))
    t0 = time.perf_counter()
    for i in range(len(mods)):  # compile, and warm every branch once
      state, _ = step(state, b, jax.random.key(i), teachers)
    jax.block_until_ready(state.images)
    compile_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    n = iters * len(mods)
    for i in range(n):
      state, _ = step(state, b, jax.random.key(100 + i), teachers)
    jax.block_until_ready(state.images)
    per_res.append((time.perf_counter() - t0) / n)
  return float(np.mean(per_res)), compile_s


def bench_torch(archs, stem, resolutions, batch, iters, dtype):
  import torch
  import torch.nn.functional as F
  import torchvision
  from torchvision.transforms import v2

  classes = 1000 if stem == "imagenet" else 100
  nets, hooks = [], []
  for arch in archs:
    net = getattr(torchvision.models, arch)(num_classes=classes)
    if stem == "cifar":
      net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
      net.maxpool = torch.nn.Identity()
    net.eval()
    for p in net.parameters():
      p.requires_grad_(False)
    terms = []

    def hook(module, inputs, _, terms=terms):
      x = inputs[0].float()
      mean = x.mean([0, 2, 3])
      var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
      terms.append(torch.norm(module.running_var - var, 2) +
                   torch.norm(module.running_mean - mean, 2))

    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.register_forward_hook(hook)
    nets.append(net)
    hooks.append(terms)
  mean = torch.tensor(MEAN).view(1, 3, 1, 1)
  std = torch.tensor(STD).view(1, 3, 1, 1)
  jitter = 32 if stem == "imagenet" else 4
  y = torch.arange(batch) % classes
  per_res = []
  for res in sorted(set(resolutions)):
    x = (torch.rand(batch, 3, res, res) * 2 - 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)
    aug = v2.Compose([v2.RandomResizedCrop(res), v2.RandomHorizontalFlip()])

    def step(t):
      k = t % len(nets)
      hooks[k].clear()
      for g in opt.param_groups:
        g["lr"] = 0.25 * 0.5 * (1 + np.cos(np.pi * t / TOTAL_STEPS))
      xa = aug(x)
      xa = torch.roll(xa, shifts=(np.random.randint(0, jitter + 1),
                                  np.random.randint(0, jitter + 1)), dims=(2, 3))
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        out = nets[k](xa)
        ce = F.cross_entropy(out.float(), y)
      loss = ce + 0.01 * (10 * hooks[k][0] + sum(hooks[k][1:]))
      opt.zero_grad()
      loss.backward()
      opt.step()
      with torch.no_grad():
        x.copy_(torch.maximum(torch.minimum(x, (1 - mean) / std), -mean / std))

    for t in range(len(nets)):
      step(t)
    t0 = time.perf_counter()
    n = iters * len(nets)
    for t in range(n):
      step(t)
    per_res.append((time.perf_counter() - t0) / n)
  return float(np.mean(per_res)), torch.__version__


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--iters", type=int, default=3, help="timed steps per teacher and resolution")
  p.add_argument("--cifar-batch", type=int, default=100)
  p.add_argument("--imagenet-batch", type=int, default=4)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--skip-torch", action="store_true")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="torch.set_num_threads; 0 keeps torch's default. On an oversubscribed "
                      "CPU, OpenMP's spinning threads make 2 threads several times slower than 1")
  p.add_argument("--only", default="", help="comma list of setting names to run")
  a = p.parse_args()
  settings = [
      ("FADRM  CIFAR", ("resnet18",), "cifar", 32, (32, 32, 32, 32), a.cifar_batch),
      ("FADRM+ CIFAR", ("resnet18", "resnet50"), "cifar", 32, (32, 32, 32, 32), a.cifar_batch),
      ("FADRM  ImageNet", ("resnet18",), "imagenet", 224, (200, 224, 200, 224), a.imagenet_batch),
      ("FADRM+ ImageNet", ("resnet18", "resnet50"), "imagenet", 224, (200, 224, 200, 224),
       a.imagenet_batch),
  ]
  if a.torch_threads and not a.skip_torch:
    import torch
    torch.set_num_threads(a.torch_threads)
  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}); jax {jax.__version__}; dtype {a.dtype}; "
        f"{a.iters} timed steps per teacher and resolution; s/image = s/step x "
        f"{TOTAL_STEPS} / batch")
  for name, archs, stem, full, res, batch in settings:
    if a.only and name.split()[0] + " " + name.split()[1] not in a.only.split(","):
      continue
    js, comp = bench_jdd(archs, stem, full, res, batch, a.iters, a.dtype)
    line = (f"{name:16s} batch {batch:3d}  jdd {js:7.3f} s/step = {js * TOTAL_STEPS / batch:8.2f} "
            f"s/image (compile {comp:.0f} s)")
    if not a.skip_torch:
      try:
        ts, version = bench_torch(archs, stem, res, batch, a.iters, a.dtype)
        line += (f" | torch {version} {ts:7.3f} s/step = {ts * TOTAL_STEPS / batch:8.2f} s/image"
                 f" | torch/jdd {ts / js:.2f}x")
      except ImportError:
        line += " | torch not installed"
    print(line, flush=True)


if __name__ == "__main__":
  main()
