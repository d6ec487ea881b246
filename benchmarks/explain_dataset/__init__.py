"""Explaining a dataset: `camexport explain` against the graph alone, and on a local Ray."""
