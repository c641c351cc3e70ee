import sys

from detectlab.cli import main

sys.exit(main())
