"""Commands for module authors and operators: ``csi-wasm inspect`` and ``csi-wasm push``.

They judge modules with the driver's own parts (the puller, the registry client, the
validator), so what they say is what ``serve`` would do. :mod:`csi_wasm.cli` parses the
flags into the options here; nothing in this package reads the command line.
"""
