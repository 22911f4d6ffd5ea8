import sys

from logoscan.cli import main

sys.exit(main())
