"""Tests of what installs csi-wasm: the Helm chart, the examples, the Dockerfile."""
