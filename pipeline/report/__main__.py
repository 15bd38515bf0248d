"""`python -m pipeline.report`: the report's command line on its own."""

import sys

from pipeline.report.cli import main

sys.exit(main())
