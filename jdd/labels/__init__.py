"""jdd.labels."""
