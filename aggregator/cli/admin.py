"""``fleetgrid admin ...``: bootstrap a central database (accounts, sites, chargers, programs, keys).

Each command validates its input with the API's own request models, so the command line and the API
refuse the same things, and prints what it stored. The database is the one of ``--config
central.toml`` (its ``[database] url``), ``--database-url``, or ``FLEETGRID_DATABASE_URL``; it is
migrated to the latest schema first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.api.schemas import UserCreate
from aggregator.api.schemas.admin import SiteCreate
from aggregator.db.models import ApiKey, Charger, Program, ProgramKind, ProgramSite, Role, Site, User
from aggregator.db.session import make_engine, make_sessionmaker

if TYPE_CHECKING:
    from aggregator.programs.terms import PaymentTerms

console = Console()
app = typer.Typer(no_args_is_help=True, help="Bootstrap users, sites, chargers, programs and API keys.")

_state: dict[str, str | None] = {"url": None, "config": None}


class AdminError(Exception):
    """A command that cannot be carried out; the message says why."""


@app.callback()
def _database(
    config: Path | None = typer.Option(None, "--config", help="central.toml (its [database] url)"),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL"),
) -> None:
    if config is not None and database_url is not None:
        _fail("give --config or --database-url, not both")
    if config is not None:
        from aggregator.runtime.config import CentralConfig, CentralConfigError

        _state["config"] = str(config)
        try:
            _state["url"] = CentralConfig.load(config).database.url
        except CentralConfigError as error:
            _fail(str(error))
    else:
        _state["url"] = database_url or os.environ.get("FLEETGRID_DATABASE_URL")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)  # one line, as written
    raise typer.Exit(code=2)


@contextlib.contextmanager
def _session() -> Iterator[Session]:
    from aggregator.db.migrate import upgrade

    url = _state["url"]
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _validated(model: Any, **fields: Any) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        _fail(problems)


def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        _fail(f"{what} already exists or names something that does not ({error.orig})")


def _user(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        _fail(f"no account {email!r}")
    assert user is not None
    return user


@app.command("init-db")
def init_db() -> None:
    """Create or migrate the database to the latest schema."""
    from aggregator.db.migrate import upgrade

    upgrade(_state["url"])
    console.print("database is at the latest schema")


@app.command("create-user")
def create_user(
    email: str = typer.Argument(..., help="Login e-mail"),
    role: Role = typer.Option(..., "--role", help="driver, grid_operator, trader, gateway or admin"),
    password_env: str | None = typer.Option(
        None, "--password-env", help="Read the password from this environment variable (else prompt)"
    ),
) -> None:
    """Create an account of any role."""
    from aggregator.api.security import hash_password

    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            _fail(f"the environment variable {password_env} is not set")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    body = _validated(UserCreate, email=email, password=password, role=role)
    with _session() as session:
        user = User(email=body.email, password_hash=hash_password(body.password), role=body.role)
        session.add(user)
        _commit(session, f"account {body.email}")
        console.print(f"created {body.role.value} {body.email} (id {user.id})")


@app.command("create-site")
def create_site(
    site_id: str = typer.Argument(..., help="Slug; also the gateway's MQTT username"),
    name: str = typer.Option(..., "--name"),
    import_limit_kw: float = typer.Option(..., "--import-limit-kw"),
    export_limit_kw: float = typer.Option(0.0, "--export-limit-kw"),
    tariff: str | None = typer.Option(None, "--tariff", help="Tariff reference"),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of the site"),
) -> None:
    """Create a site with its grid connection limits."""
    body = _validated(
        SiteCreate,
        id=site_id,
        name=name,
        import_limit_kw=import_limit_kw,
        export_limit_kw=export_limit_kw,
        tariff_ref=tariff,
        timezone=timezone,
    )
    with _session() as session:
        session.add(Site(**body.model_dump()))
        _commit(session, f"site {site_id!r}")
        console.print(f"created site {site_id}")


@app.command("add-charger")
def add_charger(
    site_id: str = typer.Argument(...),
    charge_point_id: str = typer.Argument(..., help="The OCPP charge point id"),
    evse_id: int = typer.Option(1, "--evse", min=1),
    max_kw: float = typer.Option(22.0, "--max-kw", min=0.0),
    bidirectional: bool = typer.Option(False, "--bidirectional"),
) -> None:
    """Register one EVSE of a charging station at a site."""
    with _session() as session:
        if session.get(Site, site_id) is None:
            _fail(f"no site {site_id!r}")
        charger = Charger(
            site_id=site_id,
            charge_point_id=charge_point_id,
            evse_id=evse_id,
            max_kw=max_kw,
            bidirectional=bidirectional,
        )
        session.add(charger)
        _commit(session, f"charger {charge_point_id}/{evse_id} at {site_id}")
        console.print(f"added charger {charge_point_id}/{evse_id} to {site_id} (id {charger.id})")


@app.command("create-program")
def create_program(
    program_id: str = typer.Argument(...),
    name: str = typer.Option(..., "--name"),
    kind: ProgramKind = typer.Option(..., "--kind", help="dr or v2g"),
    owner: str = typer.Option(..., "--owner", help="E-mail of the grid operator running it"),
    currency: str | None = typer.Option(
        None, "--currency", help="ISO 4217 code (default: the terms' currency, else USD)"
    ),
    terms: Path | None = typer.Option(
        None,
        "--terms",
        help="Payment terms: a JSON, TOML or YAML file of PaymentTerms fields "
        "(aggregator/programs/terms.py), e.g. per_kwh_delivered = 0.30",
    ),
    term: list[str] = typer.Option(
        [], "--term", help="One payment term NAME=VALUE, e.g. per_kwh_delivered=0.30 (over --terms)"
    ),
    unpaid: bool = typer.Option(
        False, "--unpaid", help="Declare that the program pays nothing: its events are planned unpaid"
    ),
) -> None:
    """Create a DR or V2G program run by a grid operator, with payment terms or declared unpaid."""
    from aggregator.api.schemas.admin import ProgramCreate
    from aggregator.programs.terms import TermsError, program_payment_terms

    given = _payment_terms(terms, term)
    if unpaid and given:
        _fail("--unpaid declares that the program pays nothing; give it without --terms or --term")
    if not unpaid and not given:
        _fail(
            f"a {kind.value} program needs payment terms, else its events are planned as unpaid and "
            "deliver nothing: give --terms FILE (JSON, TOML or YAML, e.g. per_kwh_delivered = 0.30) "
            "or --term per_kwh_delivered=0.30, or pass --unpaid to create it explicitly unpaid"
        )
    code = (currency or str(given.get("currency", "USD"))).upper()
    try:
        paying = program_payment_terms(given, code, unpaid=unpaid)
    except TermsError as error:
        _fail(f"{'--terms ' + str(terms) if terms is not None else '--term'}: {error}")
    with _session() as session:
        operator = _user(session, owner)
        if operator.role is not Role.GRID_OPERATOR:
            _fail(f"{owner} is a {operator.role.value}; a program is run by a grid_operator")
        body = _validated(
            ProgramCreate,
            id=program_id,
            name=name,
            kind=kind,
            owner_id=operator.id,
            currency=code,
            unpaid=unpaid,
            payment_terms=given,
        )
        session.add(Program(**body.model_dump()))
        _commit(session, f"program {program_id!r}")
        pays = "declared unpaid" if paying is None else f"paying {_rates(paying)}"
        console.print(f"created {kind.value} program {program_id} run by {owner}, {pays}")


def _payment_terms(path: Path | None, pairs: list[str]) -> dict[str, Any]:
    """The terms of ``--terms FILE`` (a mapping), with each ``--term NAME=VALUE`` set over them."""
    given: dict[str, Any] = {}
    if path is not None:
        import json
        import tomllib

        import yaml

        parsers: dict[str, Callable[[str], Any]] = {
            ".json": json.loads,
            ".toml": tomllib.loads,
            ".yaml": yaml.safe_load,
            ".yml": yaml.safe_load,
        }
        parse = parsers.get(path.suffix.lower())
        if parse is None:
            _fail(f"--terms {path}: expected a .json, .toml, .yaml or .yml file")
        assert parse is not None
        try:
            loaded = parse(path.read_text(encoding="utf-8"))
        except OSError as error:
            _fail(f"--terms {path}: {error.strerror or error}")
        except (ValueError, yaml.YAMLError) as error:  # JSON and TOML decode errors are ValueErrors
            _fail(f"--terms {path}: not valid {path.suffix.lstrip('.').upper()}: {error}")
        if not isinstance(loaded, dict):
            _fail(f"--terms {path}: expected a mapping of term names to values, got {type(loaded).__name__}")
        given.update(loaded)
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            _fail(f"--term {pair!r}: expected NAME=VALUE, e.g. per_kwh_delivered=0.30")
        given[key.strip()] = value.strip()
    return given


def _rates(terms: PaymentTerms) -> str:
    """The rates ``terms`` pay, e.g. ``0.30 USD/kWh delivered``."""
    units = {
        "per_kwh_delivered": "/kWh delivered",
        "per_kw_availability_hour": "/(kW·h) available",
        "per_event": " per event",
        "capacity_per_kw_month": "/(kW·month)",
    }
    return ", ".join(
        f"{getattr(terms, name)} {terms.currency}{unit}"
        for name, unit in units.items()
        if getattr(terms, name)
    )


@app.command("enrol")
def enrol(program_id: str = typer.Argument(...), site_id: str = typer.Argument(...)) -> None:
    """Enrol a site in a program."""
    with _session() as session:
        if session.get(Program, program_id) is None:
            _fail(f"no program {program_id!r}")
        if session.get(Site, site_id) is None:
            _fail(f"no site {site_id!r}")
        session.add(ProgramSite(program_id=program_id, site_id=site_id))
        _commit(session, f"enrolment of {site_id} in {program_id}")
        console.print(f"enrolled {site_id} in {program_id}")


@app.command("issue-key")
def issue_key(
    owner: str = typer.Option(..., "--owner", help="E-mail of the account the key acts as"),
    site_id: str | None = typer.Option(None, "--site", help="Bind the key to a site (gateway accounts)"),
    name: str | None = typer.Option(None, "--name", help="What the key is for"),
) -> None:
    """Issue an API key; it is printed once, only its hash is stored."""
    from aggregator.api.security import hash_api_key, new_api_key

    with _session() as session:
        account = _user(session, owner)
        if site_id is not None:
            if session.get(Site, site_id) is None:
                _fail(f"no site {site_id!r}")
            if account.role is not Role.GATEWAY:
                _fail(
                    f"a key bound to a site must belong to a gateway account; {owner} is {account.role.value}"
                )
        key = new_api_key()
        session.add(ApiKey(key_hash=hash_api_key(key), owner_id=account.id, site_id=site_id, name=name))
        _commit(session, "API key")
        console.print(key, highlight=False)


@app.command("create-broker-sessions")
def create_broker_sessions() -> None:
    """Create the centre's MQTT sessions on the broker of --config, so that it queues for the centre
    what gateways publish before the centre first runs (run once, before the first gateway)."""
    import asyncio

    import aiomqtt

    from aggregator.ingestion.pipeline import IngestionSettings, create_sessions
    from aggregator.runtime.config import CentralConfig

    if _state["config"] is None:
        _fail("create-broker-sessions needs --config central.toml: its [mqtt] names the broker")
    assert _state["config"] is not None
    mqtt = CentralConfig.load(Path(_state["config"])).mqtt
    if mqtt.embedded:
        _fail("[mqtt] url is 'embedded': that broker keeps no sessions; name Mosquitto (mqtt://host:1883)")
    settings = IngestionSettings(  # the ingestion's own client ids (aggregator/runtime/service.py)
        mqtt.host,
        mqtt.port,
        mqtt.username,
        mqtt.password(),
        tls_context=mqtt.tls_context(),
        client_id=f"{mqtt.client_id}-ingestion",
    )
    try:
        created = asyncio.run(create_sessions(settings))
    except (aiomqtt.MqttError, PermissionError, OSError) as error:
        _fail(f"broker {mqtt.url}: {error}")
    console.print(f"broker {mqtt.url} keeps sessions for {', '.join(created)}", highlight=False)
