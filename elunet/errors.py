"""The one error type every stage raises for problems the user can fix."""


class ElunetError(Exception):
    """A user-facing error: what went wrong, and how to fix it.

    The CLI prints ``message`` and ``hint`` without a traceback and exits 2.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
