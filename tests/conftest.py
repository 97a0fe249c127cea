"""Fixtures every test module may ask for by name: databases (``tests/postgres.py``), the API world
(``tests/api_world.py``) and a private Mosquitto (``tests/mosquitto.py``)."""

from api_world import api, client, world
from mosquitto import broker
from postgres import database_url, engine, postgres_database_url, postgres_server, session

__all__ = [
    "api",
    "broker",
    "client",
    "database_url",
    "engine",
    "postgres_database_url",
    "postgres_server",
    "session",
    "world",
]
