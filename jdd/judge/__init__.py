"""jdd as the field's judge: evaluate sets jdd did not make (`jdd eval`), move sets in a portable
format (`jdd export`), and reproduce paper cells with a verdict (`jdd reproduce`); see jdd/cli.py,
docs/evaluation.md, docs/export_format.md and docs/reproduction.md."""
