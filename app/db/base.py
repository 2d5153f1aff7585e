"""Declarative base shared by every model: dataclass mapping, naming convention, type map."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Final

from sqlalchemy import BigInteger, Date, DateTime, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, MappedAsDataclass

#: Every constraint and index gets a deterministic name, so migrations can refer to it.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Annotated aliases: the column type follows from the annotation.
Microdollars = Annotated[int, "microdollars"]
"""Money as integer microdollars, stored as BIGINT (int4 overflows at $2,147)."""
Str255 = Annotated[str, 255]
Str100 = Annotated[str, 100]
Str50 = Annotated[str, 50]
JSONObject = dict[str, Any]
JSONList = list[dict[str, Any]]


class Base(MappedAsDataclass, DeclarativeBase):
    """Declarative base: models are dataclasses, tz-aware timestamps, JSONB documents."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    type_annotation_map = {
        datetime: DateTime(timezone=True),
        date: Date(),
        Microdollars: BigInteger(),
        Str255: String(255),
        Str100: String(100),
        Str50: String(50),
        JSONObject: JSONB(),
        JSONList: JSONB(),
        dict[str, int]: JSONB(),
    }


def check_in(column: str, values: Any) -> str:
    """SQL for a CHECK that keeps an enum-like VARCHAR column within ``values``."""
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"
