"""ReciproCAM's cost in the graph, next to Grad-CAM++."""
