"""`python -m domainclip` (also what `torchrun -m domainclip` runs)."""

import sys

from domainclip.cli import main

sys.exit(main())
