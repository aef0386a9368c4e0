"""A small demo CRM shipped with crm-mapper.

It exists so that a newcomer's first ``python serve.py`` shows Khoros calls
being translated into CRM calls without installing or running anything else,
and so that our tests have a CRM whose contract we own. It is a real REST
service over one SQLite file (:mod:`democrm.app`), started in a background
thread by :func:`democrm.launcher.start_demo_crm`.
"""

from democrm.app import create_app
from democrm.launcher import start_demo_crm

__all__ = ["create_app", "start_demo_crm"]
