"""camexport: Grad-CAM and Grad-CAM++ inside one self-contained ONNX graph.

``camexport build MODEL`` traces a classifier's forward pass and the backward pass to a target layer into
one ONNX graph that outputs the logits, the explained class, the layer's activations and gradients, and the
heatmap, with the gradients recomputed from every input at run time.

Two wings share one contract (:mod:`camexport.contract`): :mod:`camexport.builder` makes graphs (needs
``camexport[build]``: torch), :mod:`camexport.runtime` runs them with onnxruntime alone.
"""

__version__ = "0.1.0"
