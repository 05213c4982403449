"""Errors the CLI prints as ``error [code]: message`` (exit status 2) instead of a traceback."""


class CliError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
