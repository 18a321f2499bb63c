"""The inference API: app, routes, request handling, feedback, drift and metrics."""
