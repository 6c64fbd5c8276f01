import sys

from dlba.cli import main

sys.exit(main())
