"""Converters from third-party weight and data layouts into jdd's own formats.

Nothing in `jdd` imports this package; the converters may import torch, which is not a jdd
dependency. Run them as `python -m third_party.<converter> --help` from the repository root.
"""
