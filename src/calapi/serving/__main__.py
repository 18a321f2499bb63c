"""``python -m calapi.serving``: run the API with the settings CALOPS_* variables give."""

from pydantic import ValidationError

from calapi.errors import CalopsError
from calapi.serving.server import serve
from calapi.serving.settings import ApiSettings

try:
    serve(ApiSettings())
except ValidationError as exc:
    first = exc.errors()[0]
    name = "CALOPS_" + "_".join(str(part) for part in first["loc"]).upper()
    raise SystemExit(f"Invalid setting {name}: {first['msg']}.") from None
except CalopsError as exc:
    raise SystemExit(str(exc)) from None
