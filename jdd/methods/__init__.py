"""jdd.methods."""
