import sys

from fastmail.cli import main

sys.exit(main())
