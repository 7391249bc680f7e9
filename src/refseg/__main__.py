"""``python -m refseg`` (and ``torchrun -m refseg``): the ``refseg`` command line."""

import sys

from refseg.cli import main

sys.exit(main())
