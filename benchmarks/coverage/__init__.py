"""Coverage sweep: every torchvision classifier built and validated at its default layer."""
