"""The run wing: a built graph explains photos, folders and datasets with onnxruntime alone (no torch).

session (the graph and its contract) → preprocess (Pillow) → visualize (overlays) → explain / metrics
(the command line's jobs); samples ships real photos for demos. ``pip install camexport`` installs
this side only.
"""
