"""The serving benchmark behind ``nox -s bench``: calapi against a bare endpoint and MLflow."""
