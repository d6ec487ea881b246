"""camexport's benchmarks: one folder per study (its scripts, committed results and README), and the shared
harness (:mod:`benchmarks.harness`). Run a study from the repository root: ``python -m benchmarks.<study>.<script>``.
This package imports nothing: the runtime-only studies (``peer``) stay torch-free."""
