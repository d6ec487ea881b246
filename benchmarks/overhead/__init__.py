"""The explanation's overhead against its FLOP-ideal, per model and layer."""
