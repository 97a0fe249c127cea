"""``fleetgrid admin``: bootstrapping a database from the command line, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from aggregator.api.security import hash_api_key, verify_password
from aggregator.cli import app
from aggregator.db.models import ApiKey, Charger, Program, ProgramSite, Role, Site, User

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
        (("create-program", "p", "--name", "P", "--kind", "dr", "--owner", "nobody@x.org"), "no account"),
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
        database_url, "create-program", "p", "--name", "P", "--kind", "v2g", "--owner", "driver@x.org"
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
