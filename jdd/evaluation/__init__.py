"""jdd.evaluation."""
