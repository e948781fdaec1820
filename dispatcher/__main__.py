"""`python -m dispatcher` is the same program as `dispatcher`."""

import sys

from .cli import main

sys.exit(main())
