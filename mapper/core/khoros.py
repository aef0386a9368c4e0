"""The Khoros side of the contract, as tables.

Each Khoros Custom CRM operation is one row: its HTTP method and path under
``/api/v1``, its success status, what body it takes and what it answers.
The server, the compiler and the docs all read this table; nothing else
lists the operations.
"""

from __future__ import annotations

from dataclasses import dataclass

# Khoros's time limits, in seconds (see docs: hard deadlines on Khoros's side).
META_BUDGET = 20.0
OPERATION_BUDGET = 8.0


@dataclass(frozen=True)
class Operation:
    """One Khoros operation a mapping must implement (or declare unsupported)."""

    name: str          # the key under `operations:` in a mapping
    method: str
    rule: str          # Flask URL rule under /api/v1
    success: int       # HTTP status on success
    input: str         # none | search | bestmatch | create | update
    object_kind: str   # customer | case
    many: bool         # answers a list of objects
    summary: str

    @property
    def has_id(self) -> bool:
        return "<id>" in self.rule

    @property
    def id_kind(self) -> str:
        """What the path's id names: the path's first segment (``/customer/<id>/cases``
        lists cases, but its id is a customer's)."""
        return self.rule.split("/")[1]


OPERATIONS: tuple[Operation, ...] = (
    Operation("search_customers", "POST", "/customers", 200, "search", "customer", True,
              "Search customers by the searchable fields Khoros sends."),
    Operation("best_match", "POST", "/customer/bestmatch", 200, "bestmatch", "customer", True,
              "Find the customers that best match a social identity, best first."),
    Operation("get_customer", "GET", "/customer/<id>", 200, "none", "customer", False,
              "Look up one customer."),
    Operation("customer_cases", "GET", "/customer/<id>/cases", 200, "none", "case", True,
              "List a customer's cases."),
    Operation("create_customer", "POST", "/customer", 201, "create", "customer", False,
              "Create a customer from the fields an agent filled."),
    Operation("update_customer", "PATCH", "/customer/<id>", 200, "update", "customer", False,
              "Change a customer's fields; answers the whole updated customer."),
    Operation("create_case", "POST", "/case", 201, "create", "case", False,
              "Create a case for a customer with the chosen interactions."),
    Operation("get_case", "GET", "/case/<id>", 200, "none", "case", False,
              "Look up one case with its interactions."),
    Operation("update_case", "PATCH", "/case/<id>", 200, "update", "case", False,
              "Change a case and add interactions; answers the whole updated case."),
)

OPERATIONS_BY_NAME = {op.name: op for op in OPERATIONS}

META_TYPES = ("customer", "case")

BESTMATCH_FIELDS = ("displayName", "screenName", "profileUrl", "description", "email", "phoneNumbers",
                    "addresses", "orderNumbers", "caseNumbers", "accountNumbers")

# Keys every case create/update may carry besides the case model's fields.
CASE_WRITE_EXTRA = ("customerId", "interactions")

CASE_STATUSES = ("open", "closed")
