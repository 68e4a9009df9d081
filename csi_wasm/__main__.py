import sys

from csi_wasm.cli import main

sys.exit(main())
