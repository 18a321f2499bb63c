"""calapi: the calorie-expenditure model, its trainer and its inference service."""

__version__ = "0.1.0"
