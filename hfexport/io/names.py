"""The file names of a model directory that hfexport writes and checks (one place for them)."""

from __future__ import annotations

__all__ = ["CONFIG_FILE", "INDEX_FILE", "MANIFEST_NAME", "SINGLE_FILE"]

CONFIG_FILE = "config.json"
MANIFEST_NAME = "hfexport.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
