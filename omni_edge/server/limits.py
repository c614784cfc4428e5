"""The server's default limits, shared by the app and the `omni-edge serve` flags."""

DEFAULT_MAX_QUEUE = 8  # requests that may wait behind the running one
DEFAULT_TIME_LIMIT_S = 600.0  # one request's generation
DEFAULT_MAX_BODY_MB = 50
