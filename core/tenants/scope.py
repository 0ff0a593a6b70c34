"""The tenant id type that repositories accept.

A ``TenantId`` is only made by authentication (api/deps.py) or by trusted server code
(workers reading a job's own tenant), so a query without a verified tenant scope cannot
be written by accident.
"""

from typing import NewType

TenantId = NewType("TenantId", str)
