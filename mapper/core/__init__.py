"""The engine: load, compile and run a mapping against a CRM. Knows no web framework."""

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The checkout the package runs from: ``schemas/`` lives beside ``mapper/``."""
