"""Run the crm-mapper server: ``python serve.py [--mapping FILE] [--host H] [--port P]``.

Without ``--mapping`` it serves the bundled demo CRM. Same as ``mapper serve``.
"""

import sys

from mapper.workbench.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
