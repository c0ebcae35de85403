"""``python -m rsgee`` is the ``rsgee`` command (handy for ``torchrun -m rsgee train …``)."""

import sys

from rsgee.cli import main

sys.exit(main())
