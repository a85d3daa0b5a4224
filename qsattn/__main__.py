import sys

from qsattn.cli import main

sys.exit(main())
