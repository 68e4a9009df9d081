"""The node catalog: named prefetch entries shown in a directory pods mount (CONTRACT.md §10).

:mod:`~csi_wasm.catalog.names` (entry names), :mod:`~csi_wasm.catalog.directory` (the
files and their atomic swap), :mod:`~csi_wasm.catalog.status` (the status on disk),
:mod:`~csi_wasm.catalog.catalog` (the state), :mod:`~csi_wasm.catalog.refresher` (its
sources and upkeep), :mod:`~csi_wasm.catalog.command` (``csi-wasm catalog``).
"""
