"""The engine: load, compile and run a mapping against a CRM. Knows no web framework."""

import os
import sysconfig

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The checkout the package runs from: ``schemas/`` lives beside ``mapper/``."""


def _schema_dir() -> str:
    """``schemas/`` beside ``mapper/`` in a checkout or an editable install; a plain
    ``pip install .`` copies it to ``<prefix>/share/crm-mapper/schemas`` (setup.cfg's
    ``data_files``), since the client fixed ``schemas/`` at the top level, outside the package."""
    beside = os.path.join(PROJECT_ROOT, "schemas")
    if os.path.isdir(beside):
        return beside
    return os.path.join(sysconfig.get_path("data"), "share", "crm-mapper", "schemas")


SCHEMA_DIR = _schema_dir()
"""Where the JSON Schemas (mapping, server file, Khoros bodies) are read from."""
