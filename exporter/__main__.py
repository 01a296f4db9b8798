import sys

from exporter.server import main

sys.exit(main())
