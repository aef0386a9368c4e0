"""crm-mapper: one declarative engine serving Khoros Marketing's Custom CRM API for any CRM.

Layout: ``source`` reads YAML with line numbers, ``compiler`` checks and
compiles a mapping, ``templating`` (with ``filters``) and ``pipeline`` run it, ``upstream`` and
``auth`` talk to the CRM, ``model`` and ``shaping`` hold both ends to the
Khoros contract, ``engine`` ties them together without any web framework,
``app`` adapts it to HTTP and ``cli`` is the ``mapper`` command.
"""

__version__ = "0.1.0"
