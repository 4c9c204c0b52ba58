import sys

from olmolab.cli import main

sys.exit(main())
