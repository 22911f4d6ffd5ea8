"""Why a sweep (scan or rematch) stops before publishing."""


class ScanError(RuntimeError):
    pass
