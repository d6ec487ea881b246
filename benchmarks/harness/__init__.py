"""The harness the studies share: the speed benchmark's contenders, timing, targets and tables, the FLOP-ideal,
and the machine description. Import the modules themselves; this package imports nothing (only
:mod:`benchmarks.harness.machine` is torch-free)."""
