"""camexport side by side with OpenVINO XAI (its scripts of step 2 run torch-free, in the peer's environment)."""
