"""Test-support code: a real OCI registry, real Wasm modules, real pushers.

Import it as ``support`` (``from support.registry import Registry``): ``tests/`` has no
``__init__.py``, so pytest (rootdir-relative "prepend" import mode) and mypy both put
``tests/`` itself on the path.

* :mod:`support.registry` runs Debian's ``docker-registry`` (distribution 2.8) on
  127.0.0.1 with an OS-chosen port and counts the requests it served.
* :mod:`support.wasm` builds valid Wasm binaries of a chosen size.
* :mod:`support.oci` pushes artifacts with our own tiny registry client.
* :mod:`support.tools` pushes with independent tools (buildah, skopeo, oras-py).
"""
