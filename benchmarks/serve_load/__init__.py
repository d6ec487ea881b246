"""`camexport serve` under load."""
