import sys

from sparseyolo.cli import main

sys.exit(main())
