"""What the admin API accepts and returns: sites, chargers, accounts, API keys, programs, the service's
status.

``<Resource>Create`` is a request body, ``<Resource>Update`` a ``PATCH`` body (fields left out stay as
they are), ``<Resource>Public`` what a response shows.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aggregator.api.schemas import UserPublic
from aggregator.db.models import Program, ProgramKind
from aggregator.programs.terms import program_payment_terms
from wire.contract import CHARGER_ID_PATTERN, SITE_ID_PATTERN

SiteId = Annotated[str, Field(pattern=SITE_ID_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Kilowatts = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _known_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {name!r}") from error
    return name


TimeZoneName = Annotated[str, AfterValidator(_known_timezone)]


class Update(BaseModel):
    """A ``PATCH`` body: fields left out stay as they are; ``null`` only clears the :attr:`nullable`."""

    model_config = ConfigDict(extra="forbid")

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_null_for_required(self) -> Update:
        for name in sorted(self.model_fields_set - self.nullable):
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null; leave it out to keep it")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the request set, by name."""
        return self.model_dump(exclude_unset=True)


# -------------------------------------------------------------------------------------------- sites


class SiteCreate(BaseModel):
    id: SiteId
    """The site's slug; also its gateway's MQTT username and topic segment."""
    name: Name
    import_limit_kw: Kilowatts
    export_limit_kw: Kilowatts
    tariff_ref: Annotated[str | None, Field(max_length=200)] = None
    timezone: TimeZoneName = "UTC"


class SiteUpdate(Update):
    """What an admin may change on a site; its id is fixed (its gateway's MQTT username)."""

    nullable = frozenset({"tariff_ref"})

    name: Name | None = None
    import_limit_kw: Kilowatts | None = None
    export_limit_kw: Kilowatts | None = None
    tariff_ref: Annotated[str | None, Field(max_length=200)] = None
    """``null`` clears the tariff reference."""
    timezone: TimeZoneName | None = None


class SitePublic(SiteCreate):
    model_config = ConfigDict(from_attributes=True)

    created_at: dt.datetime


# ----------------------------------------------------------------------------------------- chargers


class ChargerCreate(BaseModel):
    charge_point_id: Annotated[str, Field(pattern=CHARGER_ID_PATTERN)]
    """The OCPP charge point identity the station connects with."""
    evse_id: Annotated[int, Field(ge=1)]
    """The EVSE id (OCPP 2.0.1) or connector id (OCPP 1.6); 1-based."""
    max_kw: Kilowatts
    bidirectional: bool = False


class ChargerUpdate(Update):
    max_kw: Kilowatts | None = None
    bidirectional: bool | None = None


class ChargerPublic(ChargerCreate):
    model_config = ConfigDict(from_attributes=True)

    id: int
    site_id: str


# -------------------------------------------------------------------------------------------- users


class AccountPublic(UserPublic):
    """An account as an admin sees it: with whether it may still log in."""

    is_active: bool


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_active: bool
    """``false`` deactivates the account: no login, and its tokens and API keys stop working."""


# ----------------------------------------------------------------------------------------- API keys


class ApiKeyCreate(BaseModel):
    owner_id: int
    """The account the key acts as; a key bound to a site must belong to a ``gateway`` account."""
    site_id: str | None = None
    name: Annotated[str | None, Field(max_length=100)] = None
    """What the key is for (``"depot-1 gateway"``)."""


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    owner_id: int
    site_id: str | None
    revoked: bool
    created_at: dt.datetime


class ApiKeyCreated(ApiKeyPublic):
    key: str
    """The key itself, shown in this response only; the server keeps a hash."""


# ----------------------------------------------------------------------------------------- programs

ProgramSlug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
"""An ISO 4217 code (``EUR``)."""


class ProgramFields(BaseModel):
    """What a program is made of, as :class:`ProgramCreate` takes it and :class:`ProgramPublic` shows it."""

    id: ProgramSlug
    """The program's slug (lower case); what :attr:`GridSignal.program_id` names."""
    name: Name
    kind: ProgramKind
    owner_id: int
    """The ``grid_operator`` account that runs the program and posts its events."""
    currency: Currency = "USD"
    unpaid: bool = False
    """``true`` declares that the program pays nothing: it has no ``payment_terms``, and its events are
    planned without payment on purpose."""
    payment_terms: dict[str, Any] = Field(default_factory=dict)
    """How the program pays: the fields of :class:`aggregator.programs.terms.PaymentTerms` (their
    ``currency`` by default the program's), stored as given."""
    measurement: dict[str, Any] = Field(default_factory=dict)
    """How delivery is measured (baseline method and parameters); stored as given."""


class ProgramCreate(ProgramFields):
    """A new program: payment terms that pay, or ``unpaid: true``
    (:func:`aggregator.programs.terms.program_payment_terms`)."""

    @field_validator("payment_terms")
    @classmethod
    def _paid_or_declared_unpaid(cls, terms: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "currency" in info.data and "unpaid" in info.data:  # else those fields are refused already
            program_payment_terms(terms, info.data["currency"], unpaid=info.data["unpaid"])
        return terms


class ProgramUpdate(Update):
    """What an admin may change on a program; its id and kind are fixed (events refer to them)."""

    name: Name | None = None
    owner_id: int | None = None
    currency: Currency | None = None
    unpaid: bool | None = None
    payment_terms: dict[str, Any] | None = None
    """Replaces the terms whole; the program as changed must still pay or be declared unpaid."""
    measurement: dict[str, Any] | None = None


class ProgramPublic(ProgramFields):
    created_at: dt.datetime
    site_ids: list[str]
    """The enrolled sites, by id."""

    @model_validator(mode="before")
    @classmethod
    def _from_program(cls, data: Any) -> Any:
        if isinstance(data, Program):
            return {
                **{name: getattr(data, name) for name in ProgramFields.model_fields},
                "created_at": data.created_at,
                "site_ids": [site.id for site in data.sites],
            }
        return data


class DependencyPublic(BaseModel):
    """One outside peer of the service (an OpenADR VTN, InfluxDB, the MQTT broker) and whether it answers
    (read from :class:`aggregator.runtime.dependencies.Dependency`)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    """``openadr:<n>`` (the n-th ``[[openadr]]`` entry), ``influxdb`` or ``mqtt``."""
    kind: Literal["openadr-vtn", "influxdb", "mqtt-broker"]
    target: str
    """URL or ``host:port``."""
    state: Literal["unknown", "up", "down"]
    """``unknown`` until the first exchange; ``down`` while it is retried with backoff."""
    since: dt.datetime | None
    """When it entered ``state``."""
    last_error: str | None
    """Why the last failed exchange failed (kept once it is up again)."""
    failures: int
    """Failed exchanges since it was last up."""
    changes: int
    """Changes between up and down since the service started."""


class ServiceStatus(BaseModel):
    """``degraded`` while any dependency is down; the service runs on either way."""

    status: Literal["ok", "degraded"]
    dependencies: list[DependencyPublic]
