"""``python -m hfexport`` runs the command line."""

import sys

from hfexport.cli import main

sys.exit(main())
