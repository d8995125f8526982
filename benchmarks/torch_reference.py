"""PyTorch loops the benchmarks time jdd against, written in the style of the reference code.

Not part of jdd (torch, torchvision, timm, diffusers and transformers come from the test
extra). Every loop is built from the shapes alone with random weights, or, for the parity check
of `trajectory_matching.py`, from jdd's weights passed in as numpy arrays.

* `recover_loop`: SRe2L / FADRM / FADRM+ pixel recover and INFER's compensator step
  (VILA-Lab/SRe2L `recover/data_synthesis.py`, Jiacheng8/FADRM `recover/recover.py`,
  zhangxin-xd/UFC `ufc_generation/ufc_imgnet.py`): torchvision teachers in eval mode, a forward
  hook on every BatchNorm2d computing ||RV - var||_2 + ||RM - mean||_2 of its input, CE + r_bn
  x (10 x first + rest), one RandomResizedCrop box + flip + roll for the whole batch,
  Adam(0.5, 0.9) under the cosine, per-channel clip of the pixels after the update.
* `make_tm_iteration`: one trajectory-matching iteration of RepBlend / LoRS with the student as
  flat parameter vectors run through `torch.func.functional_call` (the references'
  ReparamModule), either unrolled with `create_graph=True` through every student step (MTT-VL's
  exact gradient; `exact_remat`: the same gradient with each step recomputed in the backward
  pass, as jdd's `distill.remat`) or with TESLA's two passes (LoRS / RepBlend,
  `distill_tesla_lors.py`, `distill_repblend.py`): pass 1 takes detached steps and sums G,
  pass 2 recomputes each g_i with `create_graph` and backpropagates <dL/dg_i, g_i> to the
  synthetic data; the learned learning rates get dL/deta with G held constant.
* `edge_loop`: one EDGE fine-tuning step (ichbill/EDGE `edge_diffusion_train.py`): frozen VAE
  encode and SD text encoder, noise, U-Net, one-step x0, VAE decode, CLIP features,
  symmetric InfoNCE (tau 0.1) + diversity loss, SGD on the DiffFit leaves (every U-Net
  parameter whose name holds bias / norm) while every other weight has requires_grad=False.

Each `*_loop` returns a list of step closures (one cycle: resolutions x teachers for FADRM) that
the harness calls and synchronises.
"""

from __future__ import annotations

import math
import os

import numpy as np

DATA_KEYS = ("images", "texts", "sim_diag", "sim_left", "sim_right", "lr_image", "lr_text")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- recover
def torchvision_teacher(arch: str, classes: int, tiny: bool):
  """A torchvision ImageNet network; `tiny` shrinks the DenseNet/MobileNet the tests time."""
  import torchvision
  if arch == "densenet121" and tiny:
    return torchvision.models.DenseNet(growth_rate=8, block_config=(1, 1, 1, 1),
                                       num_init_features=16, num_classes=classes)
  if arch == "mobilenet_v2" and tiny:
    return torchvision.models.mobilenet_v2(num_classes=classes, width_mult=0.25)
  if arch == "shufflenet_v2_x1_0" and tiny:
    arch = "shufflenet_v2_x0_5"
  return getattr(torchvision.models, arch)(num_classes=classes)


def recover_loop(kind: str, archs, resolutions, batch: int, classes: int, jitter: int,
                 iterations: int, device: str = "cpu", tiny: bool = False, seed: int = 0):
  """kind 'pixels' (SRe2L, FADRM: the batch of images is optimised) or 'compensator' (INFER:
  one u added to a fixed real batch). One closure per (resolution, teacher) of the cycle."""
  import torch
  import torch.nn.functional as F
  from torchvision import transforms

  torch.manual_seed(seed)
  nets, hooks = [], []
  for arch in archs:
    net = torchvision_teacher(arch, classes, tiny).to(device).eval()
    for p in net.parameters():
      p.requires_grad_(False)
    terms = []

    def hook(module, inputs, _, terms=terms):
      x = inputs[0]
      mean = x.mean([0, 2, 3])
      var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(1, unbiased=False)
      terms.append(torch.norm(module.running_var - var, 2)
                   + torch.norm(module.running_mean - mean, 2))

    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.register_forward_hook(hook)
    nets.append(net)
    hooks.append(terms)
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
  y = torch.arange(batch, device=device) % classes
  counter = [0]

  def make(res):
    if kind == "pixels":
      leaf = torch.randn(batch, 3, res, res, device=device).requires_grad_(True)
      real = None
    else:
      leaf = torch.zeros(1, 3, res, res, device=device).requires_grad_(True)
      real = torch.randn(batch, 3, res, res, device=device)
    opt = torch.optim.Adam([leaf], lr=0.25, betas=(0.5, 0.9), eps=1e-8)

    def step():
      t = counter[0]
      counter[0] += 1
      k = t % len(nets)
      hooks[k].clear()
      for g in opt.param_groups:
        g["lr"] = 0.25 * 0.5 * (1 + math.cos(math.pi * t / iterations))
      x = leaf if real is None else real + leaf
      i, j, h, w = transforms.RandomResizedCrop.get_params(x, (0.08, 1.0), (3 / 4, 4 / 3))
      x = F.interpolate(x[:, :, i:i + h, j:j + w], size=(res, res), mode="bilinear",
                        align_corners=False)
      if torch.rand(1) < 0.5:
        x = torch.flip(x, (3,))
      x = torch.roll(x, shifts=(int(np.random.randint(0, jitter + 1)),
                                int(np.random.randint(0, jitter + 1))), dims=(2, 3))
      out = nets[k](x)
      terms = hooks[k]
      loss = F.cross_entropy(out, y) + 0.01 * (10 * terms[0] + sum(terms[1:]))
      opt.zero_grad()
      loss.backward()
      opt.step()
      if real is None:
        with torch.no_grad():
          leaf.copy_(torch.maximum(torch.minimum(leaf, (1 - mean) / std), -mean / std))
      return leaf
    return step

  cycle = []
  for res in resolutions:
    step = make(res)
    cycle += [step] * len(nets)     # the teachers take turns at every resolution
  return cycle


# ------------------------------------------------------------------ trajectory matching
def nfnet_cfg(encoder: dict):
  """timm's NfCfg for jdd NFNet kwargs (the options jdd's defaults share with nfnet_l0)."""
  from timm.models.nfnet import NfCfg
  return NfCfg(depths=tuple(encoder["depths"]), channels=tuple(encoder["channels"]),
               stem_type="deep_quad", stem_chs=encoder["stem_chs"],
               group_size=encoder["group_size"], bottle_ratio=0.25, extra_conv=True,
               num_features=encoder["num_features"], act_layer="silu", attn_layer="se",
               attn_kwargs=dict(rd_ratio=0.25, rd_divisor=8))


def make_tm_iteration(arrays: dict, meta: dict, threads: int | None = None,
                      float64: bool = False, grad_mode: str = "exact", device: str = "cpu"):
  """(iteration(it) -> loss, leaves): the reference-style outer iteration (module docstring).

  `arrays` holds the distilled data, similarity factors, learned lrs and the per-iteration
  draws (idx, lam, perm); where it also holds `bb.*`, `start.*`, `target.*` weights (jdd's, for
  the parity check) they are loaded, otherwise the modules keep their own random init and the
  target is the start plus 0.01 x N(0, 1) (timing only).
  """
  import torch
  import torch.nn.functional as F
  from torch import nn
  from torch.func import functional_call
  if threads is not None or device == "cpu":
    torch.set_num_threads(threads or os.cpu_count() or 1)
  dtype = torch.float64 if float64 else torch.float32
  gen = np.random.default_rng(0)

  def tensor(name):   # a copy: SGD updates in place
    return torch.tensor(np.array(arrays[name]), dtype=dtype, device=device)

  class Head(nn.Module):
    """Linear -> GELU -> Linear -> Dropout -> + projection -> LayerNorm (the references'
    ProjectionHead, same parameter names)."""

    def __init__(self, d_in, d_out, p):
      super().__init__()
      self.projection = nn.Linear(d_in, d_out)
      self.fc = nn.Linear(d_out, d_out)
      self.p = p
      self.layer_norm = nn.LayerNorm(d_out, eps=1e-5)

    def forward(self, x):
      projected = self.projection(x)
      h = F.dropout(self.fc(F.gelu(projected)), self.p, self.training)
      return self.layer_norm(h + projected)

  def load(module, prefix):
    with torch.no_grad():
      for name, p in module.named_parameters():
        if prefix + name in arrays:
          p.copy_(tensor(prefix + name).reshape(p.shape))
    return module.to(device=device, dtype=dtype)

  if meta["encoder"]:
    from timm.models.nfnet import NormFreeNet
    backbone = NormFreeNet(nfnet_cfg(meta["encoder"]), num_classes=0)
  else:
    import timm
    backbone = timm.create_model("nfnet_l0", pretrained=False, num_classes=0)
  backbone = load(backbone, "bb.")
  feat, joint = meta["feature_dim"], meta["feature_dim"]
  students = {"text": load(Head(meta["text_dim"], joint, meta["dropout"]), "start.text.").train()}
  if meta["train_backbone"]:
    students["image"] = backbone.train()       # LoRS: the whole NFNet is the student
  else:
    backbone.eval().requires_grad_(False)       # RepBlend: frozen, only its input has a grad
    students["image"] = load(Head(feat, joint, meta["dropout"]), "start.image.").train()
  layout = {m: [(k, p.shape) for k, p in mod.named_parameters()] for m, mod in students.items()}

  def flat(prefix, m):
    if f"{prefix}.{m}.{layout[m][0][0]}" in arrays:
      return torch.cat([tensor(f"{prefix}.{m}.{k}").reshape(-1) for k, _ in layout[m]])
    vec = torch.cat([p.detach().reshape(-1) for p in students[m].parameters()]).clone()
    if prefix == "target":
      vec += 0.01 * torch.tensor(gen.standard_normal(vec.numel()), dtype=dtype, device=device)
    return vec

  def views(m, vec):
    out, i = {}, 0
    for k, shape in layout[m]:
      size = int(np.prod(shape))
      out[k] = vec[i:i + size].view(shape)
      i += size
    return out

  start = {m: flat("start", m) for m in students}
  target = {m: flat("target", m) for m in students}
  den = {m: torch.sum((start[m] - target[m]) ** 2) for m in students}
  if meta["merge"]:
    den = {m: den["image"] + den["text"] for m in students}
  leaf = {k: tensor(k).requires_grad_(True) for k in DATA_KEYS}
  opt = torch.optim.SGD([
      {"params": [leaf["images"]], "lr": meta["lr_img"]},
      {"params": [leaf["texts"]], "lr": meta["lr_txt"]},
      {"params": [leaf["lr_image"], leaf["lr_text"]], "lr": meta["lr_lr"]},
      {"params": [leaf["sim_diag"], leaf["sim_left"], leaf["sim_right"]],
       "lr": meta["lr_sim"]}], lr=meta["lr_img"], momentum=meta["momentum"])
  scale = float(np.exp(np.float32(np.log(1.0 / meta["tau"]))))
  ratio = meta["sim_alpha"] / meta["sim_rank"]
  modalities = ("image", "text")

  def wbce(logits, target_sim):
    p = torch.sigmoid(logits)
    loss = -target_sim * torch.log(p + 1e-6) - (1 - target_sim) * torch.log(1 - p + 1e-6)
    pos = (target_sim > 0.5).detach()
    return 0.5 * (torch.sum(loss * pos) / (pos.sum() + 1e-6)
                  + torch.sum(loss * ~pos) / ((~pos).sum() + 1e-6))

  def inner_loss(theta, it, k, b, data):
    x, t = data["images"][b], data["texts"][b]
    if meta["train_backbone"]:
      u = functional_call(backbone, views("image", theta["image"]), (x,))
    else:
      f = backbone(x)
      if meta["blend"]:
        lam = float(arrays["lam"][it][k])
        perm = torch.from_numpy(np.asarray(arrays["perm"][it][k], np.int64)).to(device)
        f, t = lam * f + (1 - lam) * f[perm], lam * t + (1 - lam) * t[perm]
      u = functional_call(students["image"], views("image", theta["image"]), (f,))
    v = functional_call(students["text"], views("text", theta["text"]), (t,))
    logits = scale * (F.normalize(u, dim=1, eps=0.0) @ F.normalize(v, dim=1, eps=0.0).T)
    sim = (torch.diag(data["sim_diag"][b]) + data["sim_left"][b] @ data["sim_right"][b].T * ratio)
    return wbce(logits, sim)

  def exact(it, idx):
    theta = {m: start[m].clone().requires_grad_(True) for m in students}
    lrs = {"image": leaf["lr_image"], "text": leaf["lr_text"]}
    for k in range(meta["syn_steps"]):
      inner = inner_loss(theta, it, k, idx[k], leaf)
      grads = torch.autograd.grad(inner, [theta["image"], theta["text"]], create_graph=True)
      theta = {m: theta[m] - lrs[m] * g for m, g in zip(modalities, grads)}
    loss = sum(torch.sum((theta[m] - target[m]) ** 2) / den[m] for m in students)
    loss.backward()
    return loss

  def rng_state():      # dropout draws from the generator of the tensors' device
    return torch.get_rng_state(), (torch.cuda.get_rng_state() if device != "cpu" else None)

  def set_rng_state(state):
    torch.set_rng_state(state[0])
    if state[1] is not None:
      torch.cuda.set_rng_state(state[1])

  def detached_steps(it, idx):
    """Pass 1 of TESLA and of `exact_remat`: the student steps without a graph. Returns theta_k
    and the RNG state before each step k, theta_N, and the sum G of the step gradients."""
    detached = {k: v.detach() for k, v in leaf.items()}
    lrs = {m: float(leaf[f"lr_{m}"]) for m in modalities}
    theta = {m: start[m].clone() for m in students}
    thetas, states, gsum = [], [], {m: torch.zeros_like(start[m]) for m in students}
    for k in range(meta["syn_steps"]):
      thetas.append(theta)
      states.append(rng_state())
      th = {m: theta[m].detach().requires_grad_(True) for m in students}
      grads = torch.autograd.grad(inner_loss(th, it, k, idx[k], detached),
                                  [th["image"], th["text"]])
      theta = {m: (theta[m] - lrs[m] * g).detach() for m, g in zip(modalities, grads)}
      gsum = {m: gsum[m] + g for m, g in zip(modalities, grads)}
    return thetas, states, theta, gsum

  def exact_remat(it, idx):
    # The exact gradient with each student step recomputed in the backward pass (jdd's
    # `distill.remat`): pass 1 keeps only theta_k and the RNG state before each step; going
    # back, step k is re-run with its graph and the cotangent of theta_{k+1} is pulled back to
    # theta_k, the data and the lrs (the Hessian terms included), so memory holds one step.
    thetas, states, theta, _ = detached_steps(it, idx)
    end = {m: theta[m].requires_grad_(True) for m in students}
    loss = sum(torch.sum((end[m] - target[m]) ** 2) / den[m] for m in students)
    cot = dict(zip(modalities, torch.autograd.grad(loss, [end["image"], end["text"]])))
    rng = rng_state()
    for k in reversed(range(meta["syn_steps"])):
      set_rng_state(states[k])                                 # the same dropout masks
      th = {m: thetas[k][m].detach().requires_grad_(True) for m in students}
      grads = torch.autograd.grad(inner_loss(th, it, k, idx[k], leaf),
                                  [th["image"], th["text"]], create_graph=True)
      new = [th[m] - leaf[f"lr_{m}"] * g for m, g in zip(modalities, grads)]
      torch.autograd.backward(new, [cot[m] for m in modalities],
                              inputs=[th["image"], th["text"]] + list(leaf.values()))
      cot = {m: th[m].grad for m in modalities}
    set_rng_state(rng)
    return loss.detach()

  def tesla(it, idx):
    thetas, _, _, gsum = detached_steps(it, idx)               # pass 1: detached steps
    lrs = {m: float(leaf[f"lr_{m}"]) for m in modalities}
    lr_t = {"image": leaf["lr_image"], "text": leaf["lr_text"]}
    delta = {m: start[m] - lr_t[m] * gsum[m] - target[m] for m in students}
    loss = sum(torch.sum(delta[m] ** 2) / den[m] for m in students)
    loss.backward()                                            # dL/deta with G constant
    cot = {m: (-2 * lrs[m] * delta[m] / den[m]).detach() for m in students}
    for k in range(meta["syn_steps"]):                       # pass 2: <dL/dg_k, g_k>
      th = {m: thetas[k][m].requires_grad_(True) for m in students}
      grads = torch.autograd.grad(inner_loss(th, it, k, idx[k], leaf),
                                  [th["image"], th["text"]], create_graph=True)
      torch.autograd.backward(sum(torch.sum(cot[m] * g) for m, g in zip(modalities, grads)),
                              inputs=list(leaf.values()))
    return loss

  def iteration(it):
    idx = torch.from_numpy(np.asarray(arrays["idx"][it], np.int64)).to(device)
    opt.zero_grad()
    loss = {"exact": exact, "exact_remat": exact_remat, "tesla": tesla}[grad_mode](it, idx)
    opt.step()
    return float(loss.detach())

  return iteration, leaf


def tm_inputs(meta: dict, iters: int, seed: int = 0) -> dict:
  """Random distilled data and per-iteration draws for `make_tm_iteration` (timing only)."""
  rng = np.random.default_rng(seed)
  n, res, b, steps = meta["n"], meta["res"], meta["mini_batch"], meta["syn_steps"]
  idx = np.stack([np.stack([rng.permutation(n)[:b] for _ in range(steps)])
                  for _ in range(iters)])
  return dict(images=rng.standard_normal((n, 3, res, res), np.float32),
              texts=rng.standard_normal((n, meta["text_dim"]), np.float32),
              sim_diag=np.ones(n, np.float32),
              sim_left=rng.standard_normal((n, meta["sim_rank"]), np.float32),
              sim_right=np.zeros((n, meta["sim_rank"]), np.float32),
              lr_image=np.float32(0.1), lr_text=np.float32(0.1), idx=idx,
              lam=rng.uniform(size=(iters, steps)).astype(np.float32),
              perm=np.stack([np.stack([rng.permutation(b) for _ in range(steps)])
                             for _ in range(iters)]))


# --------------------------------------------------------------------------------- EDGE
def edge_loop(unet_kw: dict, vae_kw: dict, text_kw: dict, clip_kw: dict, batch: int,
              px: int, device: str = "cpu", seed: int = 0):
  """One EDGE fine-tuning step per call (module docstring); returns [step]."""
  import diffusers
  import torch
  import torch.nn.functional as F
  import transformers

  torch.manual_seed(seed)
  unet = diffusers.UNet2DConditionModel(**unet_kw).to(device).train()
  vae = diffusers.AutoencoderKL(**vae_kw).to(device).eval()
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_kw)).to(device).eval()
  clip = transformers.CLIPModel(transformers.CLIPConfig(**clip_kw)).to(device).eval()
  for module in (vae, text, clip):
    module.requires_grad_(False)
  trainable = []
  for name, p in unet.named_parameters():
    p.requires_grad_(any(s in name for s in ("bias", "norm", "gamma", "y_embed")))
    if p.requires_grad:
      trainable.append(p)
  opt = torch.optim.SGD(trainable, lr=1e-3)
  betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
  acp = torch.cumprod(1 - betas, 0).float().to(device)
  size = clip_kw["vision_config"]["image_size"]
  cmean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=device).view(1, 3, 1, 1)
  cstd = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=device).view(1, 3, 1, 1)
  images = torch.rand(batch, 3, px, px, device=device) * 2 - 1
  ids = torch.randint(1, text_kw["vocab_size"] - 1, (batch, 77), device=device)
  mask = torch.ones_like(ids)

  def features(out):
    return out if torch.is_tensor(out) else out.pooler_output

  def step():
    with torch.no_grad():
      context = text(ids).last_hidden_state
      latents = vae.encode(images).latent_dist.sample() * 0.18215
    t = torch.randint(0, 1000, (batch,), device=device)
    a = acp[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * torch.randn_like(latents)
    eps = unet(noisy, t, encoder_hidden_states=context).sample
    x0 = (noisy - (1 - a).sqrt() * eps) / a.sqrt()
    decoded = vae.decode(x0 / 0.18215).sample
    pix = F.interpolate(decoded, size=(size, size), mode="bilinear", align_corners=False)
    pix = ((pix + 1) / 2 - cmean) / cstd
    img_f = features(clip.get_image_features(pixel_values=pix))
    txt_f = features(clip.get_text_features(input_ids=ids, attention_mask=mask))
    i_n, t_n = F.normalize(img_f, dim=-1), F.normalize(txt_f, dim=-1)
    logits = i_n @ t_n.T / 0.1
    labels = torch.arange(batch, device=device)
    con = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    j = F.normalize(torch.cat([img_f, txt_f], -1), dim=-1)
    s = j @ j.T
    div = (s * (1 - torch.eye(batch, device=device))).sum() / (batch * (batch - 1))
    loss = con + div
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()

  return [step]
