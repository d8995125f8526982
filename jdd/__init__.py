"""jdd: dataset distillation in JAX/Flax.

The pure pieces (losses, steps, augmentations, models) are importable on their own;
`jdd.run.run(config, workdir)` drives a whole method from a config.
"""

__version__ = "0.1.0"
