"""The local demo: a real registry, a real driver, three emulated pods, one shared module.

Run it as root through ``./dev demo``. It uses the same parts as the test suite
(tests/support): Debian's docker-registry, our OCI pusher, kubelet's calls over gRPC.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from support.driver import DriverProcess, NodeDirs, connect
from support.oci import push_wasm_artifact
from support.registry import Registry

from csi_wasm.mounts import find_mount

FILTER = Path(__file__).parent / "filter" / "add-header.wasm"
MOUNT_PATH = "/var/local/wasm"

WASM_PLUGIN = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: add-header
spec:
  selector:
    matchLabels:
      app: demo
  url: file://{mount}/plugin.wasm
  sha256: {sha256}
  phase: STATS
  pluginConfig: {{}}
---
# and on the pod (the istio-proxy container gets the volume through these annotations):
#   sidecar.istio.io/userVolume: '{{"wasm":{{"csi":{{"driver":"wasm.csi.dev","readOnly":true,"volumeAttributes":{{"url":"oci://{reference}"}}}}}}}}'
#   sidecar.istio.io/userVolumeMount: '{{"wasm":{{"mountPath":"{mount}","readOnly":true}}}}'
"""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> None:
    module = FILTER.read_bytes()
    with tempfile.TemporaryDirectory(prefix="csi-wasm-demo-") as work:
        base = Path(work)
        step("starting a local OCI registry (Debian's docker-registry)")
        registry = Registry(base / "registry").start()
        driver = None
        dirs = NodeDirs(base / "node")
        try:
            print(f"    registry at {registry.url}")
            step(f"pushing {FILTER.name} ({len(module)} bytes, a real proxy-wasm filter)")
            pushed = push_wasm_artifact(registry, "demo/add-header", "v1", module)
            print(f"    {pushed.reference}  manifest {pushed.manifest_digest}")

            step("starting csi-wasm serve")
            driver = DriverProcess(dirs, ["--insecure-registry", registry.host]).start()
            print(f"    socket {dirs.socket}, cache {dirs.root}")

            step("kubelet publishes the module to three pods")
            with connect(dirs) as kubelet:
                pods = [kubelet.new_pod(name=f"demo-{i}") for i in range(3)]
                for pod in pods:
                    kubelet.publish(pod, {"url": f"oci://{pushed.reference}"})
                    print(f"    {pod.namespace}/{pod.pod_name}: {pod.target}")

                step("one shared, verified, read-only copy")
                for pod in pods:
                    path = pod.target / "plugin.wasm"
                    entry = find_mount(pod.target)
                    options = ",".join(sorted(entry.options)) if entry else "NOT MOUNTED"
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    print(
                        f"    {pod.pod_name}: inode {path.stat().st_ino}  "
                        f"sha256 {digest[:16]}…  mode {oct(path.stat().st_mode & 0o777)}  "
                        f"mount {options}"
                    )
                blobs = registry.blob_gets(pushed.layer_digest)
                print(f"    the registry served the module blob {blobs} time(s) for 3 pods")
                try:
                    (pods[0].target / "plugin.wasm").write_bytes(b"tampered")
                except OSError as error:
                    code = error.errno or 0
                    print(
                        f"    a pod writing to it gets: {errno.errorcode.get(code)} "
                        f"({os.strerror(code)})"
                    )

                step("the WasmPlugin you would write")
                print(
                    WASM_PLUGIN.format(
                        mount=MOUNT_PATH, sha256=pushed.module_sha256, reference=pushed.reference
                    )
                )

                step("kubelet unpublishes the three volumes")
                for pod in pods:
                    kubelet.unpublish(pod)
                    print(
                        f"    {pod.pod_name}: mounted={find_mount(pod.target) is not None}, "
                        f"target exists={pod.target.exists()}"
                    )
        finally:
            if driver is not None:
                driver.terminate()
            dirs.cleanup_mounts()
            registry.stop()
        step("done")


if __name__ == "__main__":
    main()
