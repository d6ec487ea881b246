"""The speed benchmark: eight contenders, from eager PyTorch to the camexport graph (``python -m benchmarks.speed``)."""
