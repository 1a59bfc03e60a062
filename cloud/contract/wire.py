"""The base of the messages both sides exchange besides telemetry (two-way and fleet): frozen
models that refuse unknown fields, and the bounded names, texts and times they are made of."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

WireName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
WireText = Annotated[str, Field(max_length=4_096, pattern=r"^[^\x00]*$")]
Micros = Annotated[int, Field(ge=0, le=2**62)]


class Wire(BaseModel):
    """Base of the two-way and fleet messages: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")
