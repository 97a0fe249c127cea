"""``fleetgrid admin``: bootstrapping a database from the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from api_world import TestClient, World
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from aggregator.api.security import hash_api_key, verify_password
from aggregator.cli import app
from aggregator.db.models import ApiKey, Charger, Program, ProgramSite, Role, Site, User
from aggregator.programs.terms import PaymentTerms

runner = CliRunner()


def admin(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["admin", "--database-url", url, *args], env=env)
    return result.exit_code, result.output


def ok(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    code, output = admin(url, *args, env=env)
    assert code == 0, output
    return output


def test_bootstrap_a_depot(database_url: str, session: Session) -> None:
    env = {"OPS_PASSWORD": "a long enough password"}
    ok(
        database_url,
        "create-user",
        "ops@grid.example",
        "--role",
        "grid_operator",
        "--password-env",
        "OPS_PASSWORD",
        env=env,
    )
    ok(
        database_url,
        "create-user",
        "gw@depot.example",
        "--role",
        "gateway",
        "--password-env",
        "OPS_PASSWORD",
        env=env,
    )
    ok(
        database_url,
        "create-site",
        "depot-1",
        "--name",
        "Depot 1",
        "--import-limit-kw",
        "250",
        "--timezone",
        "America/Los_Angeles",
    )
    ok(database_url, "add-charger", "depot-1", "cp-1", "--max-kw", "11", "--bidirectional")
    ok(
        database_url,
        "create-program",
        "dr-1",
        "--name",
        "Evening DR",
        "--kind",
        "dr",
        "--owner",
        "ops@grid.example",
        "--term",
        "per_kwh_delivered=0.30",
    )
    ok(database_url, "enrol", "dr-1", "depot-1")
    key = ok(
        database_url, "issue-key", "--owner", "gw@depot.example", "--site", "depot-1", "--name", "gw"
    ).strip()

    operator = session.scalars(select(User).where(User.email == "ops@grid.example")).one()
    assert operator.role is Role.GRID_OPERATOR
    assert verify_password("a long enough password", operator.password_hash)
    site = session.get(Site, "depot-1")
    assert site is not None and site.timezone == "America/Los_Angeles" and site.import_limit_kw == 250
    charger = session.scalars(select(Charger)).one()
    assert (charger.charge_point_id, charger.max_kw, charger.bidirectional) == ("cp-1", 11, True)
    program = session.get(Program, "dr-1")
    assert program is not None and program.owner_id == operator.id
    assert (program.payment_terms, program.currency, program.unpaid) == (
        {"per_kwh_delivered": "0.30"},
        "USD",
        False,
    )
    assert session.get(ProgramSite, ("dr-1", "depot-1")) is not None
    stored = session.scalars(select(ApiKey)).one()
    assert stored.key_hash == hash_api_key(key) and stored.site_id == "depot-1" and stored.name == "gw"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-site", "bad id", "--name", "x", "--import-limit-kw", "1"), "id"),
        (("create-site", "s", "--name", "x", "--import-limit-kw", "-1"), "import_limit_kw"),
        (
            ("create-site", "s", "--name", "x", "--import-limit-kw", "1", "--timezone", "Mars/Base"),
            "Mars/Base",
        ),
        (("add-charger", "nowhere", "cp-1"), "no site 'nowhere'"),
        (
            ("create-program", "p", "--name", "P", "--kind", "dr", "--owner", "nobody@x.org", "--unpaid"),
            "no account",
        ),
        (("enrol", "no-program", "no-site"), "no program"),
        (
            ("create-user", "a@b.org", "--role", "driver", "--password-env", "UNSET_VARIABLE"),
            "UNSET_VARIABLE",
        ),
    ],
)
def test_bad_input_is_refused_by_name(
    database_url: str, session: Session, args: tuple[str, ...], message: str
) -> None:
    code, output = admin(database_url, *args)
    assert code == 2
    assert message in output


def test_a_program_must_be_run_by_a_grid_operator(database_url: str, session: Session) -> None:
    env = {"PW": "a long enough password"}
    ok(database_url, "create-user", "driver@x.org", "--role", "driver", "--password-env", "PW", env=env)
    code, output = admin(
        database_url,
        "create-program",
        "p",
        "--name",
        "P",
        "--kind",
        "v2g",
        "--owner",
        "driver@x.org",
        "--unpaid",
    )
    assert code == 2 and "grid_operator" in output
    assert session.get(Program, "p") is None


def test_duplicates_are_refused_and_nothing_is_lost(database_url: str, session: Session) -> None:
    ok(database_url, "create-site", "depot-1", "--name", "Depot 1", "--import-limit-kw", "100")
    code, output = admin(database_url, "create-site", "depot-1", "--name", "Other", "--import-limit-kw", "5")
    assert code == 2 and "depot-1" in output
    site = session.get(Site, "depot-1")
    assert site is not None and site.name == "Depot 1"


def test_config_file_names_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'central.sqlite'}"
    config = tmp_path / "central.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    result = runner.invoke(app, ["admin", "--config", str(config), "init-db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "central.sqlite").exists()
    config.write_text("[database]\nurl = 3\n")
    result = runner.invoke(app, ["admin", "--config", str(config), "init-db"])
    assert result.exit_code == 2 and "database.url" in result.output


# ------------------------------------------------------------------------------- programs' terms

TERMS = {
    "currency": "EUR",
    "per_kwh_delivered": 0.3,
    "penalty_per_kwh_short": 0.1,
    "performance_threshold": 0.5,
    "platform_fee_percent": 20,
    "wear_funded_by_platform": True,
}
"""Payment terms as an operator writes them; stored exactly so."""

TERMS_FILES = {
    "json": json.dumps(TERMS),
    "toml": """currency = "EUR"
per_kwh_delivered = 0.3
penalty_per_kwh_short = 0.1
performance_threshold = 0.5
platform_fee_percent = 20
wear_funded_by_platform = true
""",
    "yaml": """currency: EUR
per_kwh_delivered: 0.3
penalty_per_kwh_short: 0.1
performance_threshold: 0.5
platform_fee_percent: 20
wear_funded_by_platform: true
""",
}


def operator(database_url: str) -> str:
    env = {"PW": "a long enough password"}
    ok(database_url, "create-user", "ops@x.org", "--role", "grid_operator", "--password-env", "PW", env=env)
    return "ops@x.org"


def create_program(url: str, *args: str) -> tuple[int, str]:
    return admin(url, "create-program", "p", "--name", "P", "--kind", "dr", "--owner", "ops@x.org", *args)


@pytest.mark.parametrize("suffix", sorted(TERMS_FILES))
def test_program_terms_come_from_a_file(
    database_url: str, session: Session, tmp_path: Path, suffix: str
) -> None:
    operator(database_url)
    path = tmp_path / f"terms.{suffix}"
    path.write_text(TERMS_FILES[suffix])
    output = ok(database_url, "create-program", "p", "--name", "P", "--kind", "dr", "--owner", "ops@x.org",
                "--terms", str(path))  # fmt: skip
    assert "paying 0.3 EUR/kWh delivered" in output
    program = session.get(Program, "p")
    assert program is not None
    assert program.payment_terms == TERMS and program.currency == "EUR" and not program.unpaid
    terms = PaymentTerms.model_validate(program.payment_terms)  # what settlement and planning read
    assert (terms.per_kwh_delivered, terms.platform_fee_percent) == (Decimal("0.3"), Decimal(20))


def test_a_term_option_sets_one_term_over_the_file(
    database_url: str, session: Session, tmp_path: Path
) -> None:
    operator(database_url)
    path = tmp_path / "terms.json"
    path.write_text(json.dumps(TERMS))
    ok(database_url, "create-program", "p", "--name", "P", "--kind", "v2g", "--owner", "ops@x.org",
       "--terms", str(path), "--term", "per_kwh_delivered=0.45", "--term", "per_event = 2")  # fmt: skip
    program = session.get(Program, "p")
    assert program is not None
    assert program.payment_terms == {**TERMS, "per_kwh_delivered": "0.45", "per_event": "2"}


def test_a_program_without_terms_is_refused(database_url: str, session: Session) -> None:
    operator(database_url)
    code, output = create_program(database_url)
    assert code == 2
    assert "a dr program needs payment terms" in output
    assert "--terms FILE" in output and "--term per_kwh_delivered=0.30" in output and "--unpaid" in output
    assert session.get(Program, "p") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"per_kwh_delivered": -1}', "--terms {path}: per_kwh_delivered: Input should be greater than"),
        ('{"per_kwh": 0.3}', "per_kwh: Extra inputs are not permitted"),
        ('{"penalty_per_kwh_short": 0.3}', "the terms pay nothing"),
        ('{"currency": "EUR", "per_event": 1}', "the terms pay in EUR, the program is in USD"),
        ("[1, 2]", "--terms {path}: expected a mapping of term names to values, got list"),
        ("{", "--terms {path}: not valid JSON"),
    ],
)
def test_bad_terms_are_refused_by_name(
    database_url: str, session: Session, tmp_path: Path, text: str, message: str
) -> None:
    operator(database_url)
    path = tmp_path / "terms.json"
    path.write_text(text)
    currency = ["--currency", "usd"] if "per_event" in text else []
    code, output = create_program(database_url, "--terms", str(path), *currency)
    assert code == 2
    assert message.format(path=path) in " ".join(output.split())
    assert session.get(Program, "p") is None


def test_unpaid_and_terms_contradict(database_url: str, session: Session) -> None:
    operator(database_url)
    code, output = create_program(database_url, "--unpaid", "--term", "per_kwh_delivered=0.3")
    assert code == 2 and "--unpaid declares that the program pays nothing" in output
    code, output = create_program(database_url, "--term", "per_kwh_delivered")
    assert code == 2 and "expected NAME=VALUE" in output
    assert session.get(Program, "p") is None


def test_an_unpaid_program_is_visible_in_the_api(
    database_url: str, world: World, client: TestClient, session: Session
) -> None:
    output = ok(database_url, "create-program", "dr-free", "--name", "Free DR", "--kind", "dr",
                "--owner", world.users[Role.GRID_OPERATOR].email, "--unpaid")  # fmt: skip
    assert "declared unpaid" in output
    shown = client.get("/admin/programs/dr-free", headers=world.headers(Role.ADMIN))
    assert shown.status_code == 200, shown.text
    assert (shown.json()["unpaid"], shown.json()["payment_terms"]) == (True, {})
