"""`python3 -m harness` from bench/proxy: what ../run does."""

import sys

from .driver import Stopping, main

try:
    sys.exit(main())
except KeyboardInterrupt:
    print("bench: interrupted; the partial report is in the output directory", file=sys.stderr)
    sys.exit(130)
except Stopping:
    print("bench: terminated; the partial report is in the output directory", file=sys.stderr)
    sys.exit(143)
