"""The node's module cache: the content-addressed store, records of published volumes,
garbage collection, fsck and start-up reconciliation."""
