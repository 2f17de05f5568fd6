"""``python -m kaem.bench``."""

import sys

from kaem.bench.harness import main

main(sys.argv[1:])
