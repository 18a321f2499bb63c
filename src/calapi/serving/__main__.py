"""``python -m calapi.serving``: run the API with the settings CALOPS_* variables give."""

from calapi.errors import CalopsError
from calapi.serving.server import serve
from calapi.serving.settings import ApiSettings

try:
    serve(ApiSettings())
except CalopsError as exc:
    raise SystemExit(str(exc)) from None
