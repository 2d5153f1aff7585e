"""Database layer: declarative base, engine factory, migrations and models."""
