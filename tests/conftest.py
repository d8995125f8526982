import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # the XLA flags of jdd's commands, before any JAX backend starts


@pytest.fixture(autouse=True)
def _seed_global_generators():
  """Every test starts from the same global torch / NumPy generator state.

  Torch's own layer initialisation draws from its global generator, so without this a test's
  reference network would depend on which tests pytest-xdist happened to run before it in the
  same worker (a train-mode parity check failed in one of two suite runs that way).
  """
  np.random.seed(0)
  torch = sys.modules.get("torch")
  if torch is not None:
    torch.manual_seed(0)
