"""How ``csi-wasm serve`` sets up the catalog: kept out of the server so it stays small."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from csi_wasm.cache.gc import CacheCollector
from csi_wasm.cache.store import ModuleStore
from csi_wasm.catalog.catalog import Catalog
from csi_wasm.catalog.directory import catalog_dir, held_digests
from csi_wasm.catalog.refresher import (
    CONFIGMAP_SOURCE,
    FILE_SOURCE,
    MAX_FILE_INTERVAL,
    CatalogRefresher,
    PrefetchFile,
    PrefetchLists,
)
from csi_wasm.kube.configmap import ConfigMapWatcher, parse_configmap_ref, watcher_from_environment
from csi_wasm.kube.events import (
    REASON_INVALID_CATALOG_ENTRY,
    EventRecorder,
    KubernetesEventRecorder,
)
from csi_wasm.metrics import Metrics
from csi_wasm.prefetch.prefetcher import Prefetcher
from csi_wasm.settings import ServeSettings


def open_catalog(
    settings: ServeSettings, store: ModuleStore, collector: CacheCollector, metrics: Metrics
) -> Catalog:
    """The node catalog as the last run left it: served at once, before any fetch."""
    catalog = Catalog(catalog_dir(settings.node.root), store, grace=settings.catalog_grace)
    catalog.prepare()
    collector.add_pin_source(lambda: held_digests(catalog.path))
    metrics.set_catalog_source(catalog.counts)
    return catalog


@dataclass
class ListFollowers:
    """What follows the prefetch list's sources: the ConfigMap watcher and the refresher."""

    watcher: ConfigMapWatcher | None
    refresher: CatalogRefresher

    def start(self) -> None:
        self.refresher.start()
        if self.watcher is not None:
            self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.refresher.stop()


def follow_lists(
    settings: ServeSettings, catalog: Catalog, prefetcher: Prefetcher, events: EventRecorder
) -> ListFollowers:
    """Join ``--prefetch-file`` and ``--prefetch-configmap`` into the catalog and prefetcher.

    The file's list is read now, so the first fetches see it; nothing is started.
    """
    if settings.prefetch_file is None and settings.prefetch_configmap is None:
        # No list at all (the flags were dropped): no name is listed any more. Modules
        # stay under sha256/ for the grace period, as for any removed entry.
        catalog.set_entries([], complete=True)
    sources = [FILE_SOURCE] if settings.prefetch_file is not None else []
    watcher = watcher_from_environment(
        settings.prefetch_configmap,
        lambda entries: lists.update(CONFIGMAP_SOURCE, entries),
        kubeconfig=settings.kubeconfig,
    )
    if watcher is not None:
        sources.append(CONFIGMAP_SOURCE)
    warnings = _configmap_warnings(settings, events)
    lists = PrefetchLists(catalog, prefetcher.set_dynamic, sources, warnings)
    prefetch_file = None
    if settings.prefetch_file is not None:
        prefetch_file = PrefetchFile(settings.prefetch_file)
    interval = min(settings.prefetch_refresh, MAX_FILE_INTERVAL)
    refresher = CatalogRefresher(catalog, lists, prefetch_file, interval, prefetcher.fetch_again)
    refresher.tick()
    return ListFollowers(watcher, refresher)


def _configmap_warnings(
    settings: ServeSettings, events: EventRecorder
) -> Callable[[str, str], None] | None:
    """A refused catalog entry from the ConfigMap becomes a Warning Event on it."""
    if settings.prefetch_configmap is None or not isinstance(events, KubernetesEventRecorder):
        return None  # outside a cluster: the log says it
    namespace, name = parse_configmap_ref(settings.prefetch_configmap)

    def warn(source: str, message: str) -> None:
        if source == CONFIGMAP_SOURCE:
            events.object_warning(
                "ConfigMap", namespace, name, REASON_INVALID_CATALOG_ENTRY, message
            )

    return warn
