import sys

from boxhack.cli import main

sys.exit(main())
