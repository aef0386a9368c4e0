"""crm-mapper: one declarative engine serving Khoros Marketing's Custom CRM API for any CRM.

The package is grouped by concept, so that a newcomer can guess where a thing lives:

- ``mapper.errors``: the one error hierarchy, shared by every part.
- ``mapper.core``: the engine, free of any web framework. ``source`` reads YAML
  with line numbers, ``compiler`` checks and compiles a mapping, ``templating``
  (with ``filters``) and ``pipeline`` run it, ``upstream`` and ``auth`` talk to
  the CRM on a ``budget``, ``model`` and ``shaping`` hold both ends to the
  Khoros contract described in ``khoros``, and ``engine`` ties them together.
- ``mapper.service``: the HTTP service around the engine (``app`` adapts Flask
  to it, ``logs`` keeps secrets out of log lines).
- ``mapper.workbench``: the integrator's tools (``cli`` is the ``mapper`` command).
"""

__version__ = "0.1.0"
