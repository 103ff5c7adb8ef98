"""
The client's failures as the user should meet them: one plain sentence and
an exit status, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# Left as asked, but not every line was confirmed delivered.
EXIT_UNDELIVERED = 3
# (1.2) Removed from the room by its host: kicked (may join again), banned.
EXIT_KICKED = 4
EXIT_BANNED = 5


class ClientError(Exception):
    """Something went wrong that the user can act on; C{sentence} says what."""

    exit_code = EXIT_FAILURE

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


class UsageError(ClientError):
    """The command line (or a typed-in answer in a script) cannot work."""

    exit_code = EXIT_USAGE


class RequestRefused(ClientError):
    """The server answered a TCRP request with a status other than 200."""

    def __init__(
        self,
        sentence: str,
        status: int,
        server_message: str,
        retry_after: float | None = None,
        response: dict | None = None,
    ) -> None:
        super().__init__(sentence)
        self.status = status
        self.server_message = server_message
        # PROTOCOL 1.1: seconds after which the same request may succeed
        # (a 429, or a momentary 503); None from a version 1 server.
        self.retry_after = retry_after
        # The whole RESPONSE body: a 307's "tcp" and other keys.
        self.response = response or {}
