import sys

from lxcone.driver.main import main

sys.exit(main())
