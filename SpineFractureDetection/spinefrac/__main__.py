import sys

from spinefrac.cli import main

sys.exit(main())
