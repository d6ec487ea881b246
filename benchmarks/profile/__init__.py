"""Where a camexport graph spends its time: onnxruntime's profiler, per op type and for the CAM part."""
