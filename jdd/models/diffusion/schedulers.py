"""Noise schedules and samplers as pure jnp functions: DDPM noising, DDIM and PNDM (PLMS) steps,
classifier-free guidance.

Reference: diffusers' `DDPMScheduler.add_noise`, `DDIMScheduler.set_timesteps/step` and
`PNDMScheduler.set_timesteps/step_plms` (read in diffusers 0.42.1) with Stable Diffusion 1.5's
scheduler config: 1000 training steps, 'scaled_linear' betas (linspace(sqrt(0.00085),
sqrt(0.012), 1000)**2), epsilon prediction, set_alpha_to_one=False (the alpha before step 0 is
alphas_cumprod[0]), steps_offset=1, timestep_spacing='leading', skip_prk_steps=True,
clip_sample=False. Facts carried over:

* add_noise: sqrt(a_t) x0 + sqrt(1 - a_t) eps, with a = alphas_cumprod.
* DDIM (eta >= 0): x0_hat = (x - sqrt(1 - a_t) eps) / sqrt(a_t); sigma = eta sqrt((1 - a_p) /
  (1 - a_t) (1 - a_t / a_p)); x_prev = sqrt(a_p) x0_hat + sqrt(1 - a_p - sigma^2) eps + sigma z,
  with t_prev = t - 1000 // steps and a_p = final alpha when t_prev < 0.
* PLMS: timesteps (leading, + offset) with the second-to-last repeated, reversed (N + 1 calls);
  the first call stores x and eps, the second averages the two eps and restarts from the stored
  x, then 2nd/3rd/4th-order Adams-Bashforth combinations of the stored eps; the transfer is
  x_prev = sqrt(a_p / a_t) x - (a_p - a_t) eps / (a_t sqrt(1 - a_p) + sqrt(a_t (1 - a_t) a_p)).

Deliberate differences: the PNDM state (counter, the last four eps, the stored sample) is an
explicit pytree so a sampling loop can be a `lax.scan`; the Runge-Kutta (PRK) warm-up that SD
skips is not implemented; DDIM's eta noise comes from an explicit key.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """SD 1.5's `scheduler/scheduler_config.json` values (the ones these formulas read)."""

  num_train_timesteps: int = 1000
  beta_start: float = 0.00085
  beta_end: float = 0.012
  beta_schedule: str = "scaled_linear"
  set_alpha_to_one: bool = False
  steps_offset: int = 1

  @classmethod
  def from_dict(cls, d) -> "ScheduleConfig":
    if d.get("prediction_type", "epsilon") != "epsilon":
      raise ValueError("only epsilon prediction is implemented")
    if d.get("timestep_spacing", "leading") != "leading":
      raise ValueError("only timestep_spacing='leading' is implemented")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names and v is not None})


def betas(cfg: ScheduleConfig) -> np.ndarray:
  n = cfg.num_train_timesteps
  if cfg.beta_schedule == "scaled_linear":
    return np.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=np.float32) ** 2
  if cfg.beta_schedule == "linear":
    return np.linspace(cfg.beta_start, cfg.beta_end, n, dtype=np.float32)
  raise ValueError(f"beta_schedule {cfg.beta_schedule!r} not implemented")


def alphas_cumprod(cfg: ScheduleConfig = ScheduleConfig()) -> jax.Array:
  """Cumulative product of 1 - beta in float32 (torch.cumprod on float32, as diffusers)."""
  acp = np.cumprod(1.0 - betas(cfg).astype(np.float32), dtype=np.float32)
  return jnp.asarray(acp)


def final_alpha(cfg: ScheduleConfig, acp: jax.Array) -> jax.Array:
  return jnp.float32(1.0) if cfg.set_alpha_to_one else acp[0]


def _bcast(a: jax.Array, like: jax.Array) -> jax.Array:
  a = jnp.asarray(a, jnp.float32)
  return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def add_noise(acp: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise; `t` is (B,) or a scalar."""
  a = _bcast(acp[t], x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def predict_x0(acp: jax.Array, x_t: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """The one-step estimate (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (EDGE's decoded x0)."""
  a = _bcast(acp[t], x_t)
  return (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)


def step_ratio(cfg: ScheduleConfig, steps: int) -> int:
  return cfg.num_train_timesteps // steps


def ddim_timesteps(cfg: ScheduleConfig, steps: int) -> np.ndarray:
  """'leading' spacing: (arange(steps) * ratio)[::-1] + steps_offset."""
  return (np.arange(steps) * step_ratio(cfg, steps)).round()[::-1].astype(np.int64) \
      + cfg.steps_offset


def ddim_step(cfg: ScheduleConfig, acp: jax.Array, steps: int, eps: jax.Array, t: jax.Array,
              x: jax.Array, eta: float = 0.0, key: jax.Array | None = None) -> jax.Array:
  """One DDIM update x_t -> x_{t - ratio} for epsilon `eps` predicted at integer step `t`."""
  t_prev = t - step_ratio(cfg, steps)
  a_t = acp[t]
  a_p = jnp.where(t_prev >= 0, acp[jnp.maximum(t_prev, 0)], final_alpha(cfg, acp))
  x0 = (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
  var = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)
  std = eta * jnp.sqrt(var)
  prev = jnp.sqrt(a_p) * x0 + jnp.sqrt(1.0 - a_p - std ** 2) * eps
  if eta > 0:
    if key is None:
      raise ValueError("ddim_step with eta > 0 needs a key")
    prev = prev + std * jax.random.normal(key, x.shape, x.dtype)
  return prev


def pndm_timesteps(cfg: ScheduleConfig, steps: int) -> np.ndarray:
  """PLMS-only schedule: [t_0..t_{N-2}, t_{N-2}, t_{N-1}] reversed (N + 1 model calls)."""
  ts = (np.arange(steps) * step_ratio(cfg, steps)).round().astype(np.int64) + cfg.steps_offset
  return np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()


@flax.struct.dataclass
class PNDMState:
  counter: jax.Array      # number of step calls so far
  ets: jax.Array          # (4, *shape): the stored eps, newest last
  n_ets: jax.Array        # how many of `ets` are filled (<= 4)
  cur_sample: jax.Array   # the sample stored by the first call


def pndm_init(shape: tuple[int, ...], dtype=jnp.float32) -> PNDMState:
  return PNDMState(jnp.int32(0), jnp.zeros((4, *shape), dtype), jnp.int32(0),
                   jnp.zeros(shape, dtype))


def _pndm_transfer(cfg, acp, x, t, t_prev, eps):
  a_t = acp[t]
  a_p = jnp.where(t_prev >= 0, acp[jnp.maximum(t_prev, 0)], final_alpha(cfg, acp))
  b_t, b_p = 1.0 - a_t, 1.0 - a_p
  coeff = jnp.sqrt(a_p / a_t)
  denom = a_t * jnp.sqrt(b_p) + jnp.sqrt(a_t * b_t * a_p)
  return coeff * x - (a_p - a_t) * eps / denom


def pndm_step(cfg: ScheduleConfig, acp: jax.Array, steps: int, state: PNDMState, eps: jax.Array,
              t: jax.Array, x: jax.Array) -> tuple[jax.Array, PNDMState]:
  """One PLMS call at timestep `t` (from `pndm_timesteps`); returns (x_prev, new state)."""
  ratio = step_ratio(cfg, steps)
  c = state.counter
  second = c == 1
  ets = jnp.where(second, state.ets, jnp.concatenate([state.ets[1:], eps[None]], axis=0))
  n = jnp.where(second, state.n_ets, jnp.minimum(state.n_ets + 1, 4))
  t_cur = jnp.where(second, t + ratio, t)
  t_prev = jnp.where(second, t, t - ratio)
  e1, e2, e3, e4 = ets[3], ets[2], ets[1], ets[0]
  combos = [eps, (eps + e1) / 2, (3 * e1 - e2) / 2, (23 * e1 - 16 * e2 + 5 * e3) / 12,
            (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4) / 24]
  conds = [(n == 1) & (c == 0), (n == 1) & (c == 1), n == 2, n == 3]
  model_out = jnp.select(conds, combos[:4], combos[4])
  sample = jnp.where(second, state.cur_sample, x)
  cur = jnp.where(c == 0, x, state.cur_sample)
  prev = _pndm_transfer(cfg, acp, sample, t_cur, t_prev, model_out)
  return prev, PNDMState(c + 1, ets, n, cur)


def cfg_combine(eps_uncond: jax.Array, eps_text: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance: eps_u + s (eps_c - eps_u)."""
  return eps_uncond + scale * (eps_text - eps_uncond)
