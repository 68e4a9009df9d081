"""Media type strings of the manifests and layers csi-wasm understands.

Where each was confirmed is noted next to it; see also each format module.
"""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# What we send in Accept, most specific first.
MANIFEST_ACCEPT = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST)

# Configs of container images (docker build, buildah, kaniko, crane, ko).
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_CONFIGS = frozenset({DOCKER_IMAGE_CONFIG, OCI_IMAGE_CONFIG})

# Configs of artifacts pushed without one: OCI 1.1 empty descriptor (oras >= 1.0),
# and oras-go's "unknown" config (oras 0.x, oras --image-spec v1.0, oras-py).
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"

# CNCF TAG Runtime "Wasm OCI artifact".
WASM_CONFIG_V0 = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"

# Layers of Istio's compat images (a tarball with plugin.wasm inside). The plain tar
# type is also what `oras push file` gives a file of any content.
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

# Solo.io "oci" variant of the Wasm image spec (solo-io/wasm spec/spec.md; wasme
# tools/wasme/pkg/model/image.go; Istio pkg/wasm extractOCIArtifactImage). wasme pushes
# the config descriptor both as the manifest config and as the first of two layers.
MODULE_WASM_CONFIG_V1 = "application/vnd.module.wasm.config.v1+json"
MODULE_WASM_CONTENT_V1 = "application/vnd.module.wasm.content.layer.v1+wasm"

# wasme before the spec was renamed (WebAssembly Hub, 2019-2020): config as the
# manifest config, one code layer titled code.wasm / filter.wasm.
SOLO_WASM_CONFIG_V1 = "application/vnd.io.solo.wasm.config.v1+json"
SOLO_WASM_CODE_V1 = "application/vnd.io.solo.wasm.code.v1+wasm"

# engineerd/wasm-to-oci (pkg/oci/mediatypes.go); cosign `upload wasm` uses the same.
WASM_TO_OCI_CONFIG_V1 = "application/vnd.wasm.config.v1+json"
WASM_TO_OCI_CONTENT_V1 = "application/vnd.wasm.content.layer.v1+wasm"
