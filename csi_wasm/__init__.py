"""csi-wasm: a Kubernetes CSI node driver that delivers WebAssembly modules to pods."""

__version__ = "0.1.0"
