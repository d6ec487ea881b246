"""camexport on a CUDA GPU: the session against the CPU's, then the speed tables."""
