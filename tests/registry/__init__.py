"""Tests of :mod:`csi_wasm.registry` against an in-process fake registry."""
