"""All tables of the product in one SQLAlchemy ``MetaData`` (for Alembic and tests).

Importing this module imports every package's models; nothing else needs to.
"""

from __future__ import annotations

from sqlmodel import SQLModel

import billing.models  # noqa: F401  (registers billing tables)
import csms.load_models  # noqa: F401  (registers load management tables)
import csms.models  # noqa: F401  (registers OCPP tables)
import csms.operations_models  # noqa: F401  (registers operations tables)

metadata = SQLModel.metadata
