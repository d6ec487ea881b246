"""The suite by wing, each folder with a conftest of its own:

* ``runtime/``: the run side (no torch anywhere on its path): committed graphs, known answers in numpy;
* ``builder/``: the build side (torch): tracing, export, validation, the methods, the model sources;
* ``e2e/``: across both and beyond the package: fresh installs, Node.js and the browser, OpenVINO, benchmarks,
  the docs.

This file only makes the torch-free helpers at this level importable (fixtures.py, numpy_cam.py, support.py);
building.py, the builder's helpers, imports torch and is imported by the builder and e2e folders alone.
"""
