"""The domain's errors. api/errors.py maps each to one gRPC status code."""


class CustodyError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidArgument(CustodyError):
    """The request is malformed or out of range; nothing was changed."""


class NotFound(CustodyError):
    """A referenced object (account, hold, ...) does not exist."""


class FailedPrecondition(CustodyError):
    """The request is well formed but the current state forbids it."""


class InsufficientFunds(FailedPrecondition):
    """An available balance is smaller than the amount asked for."""


class AccountFrozen(FailedPrecondition):
    """The account is frozen for outgoing movements."""

    def __init__(self, message: str, account_id: int | None = None):
        super().__init__(message)
        self.account_id = account_id


class IdempotencyConflict(CustodyError):
    """An idempotency key was reused with a different request."""


class LimitExceeded(CustodyError):
    """A stored total would exceed what the ledger can represent exactly."""


class OutOfRange(CustodyError):
    """A cursor beyond the end of its journal: from another database, or from before a restore.
    Waiting would not help: events committed later below it would never be sent."""


class Unavailable(CustodyError):
    """A part the request needs is not answering; the request may be retried (with its idempotency key)."""


class DatabaseUnavailable(Unavailable):
    """The database did not answer (or kept failing with operational errors:
    a lost connection, deadlocks). Whether a write was applied is unknown, as
    the connection may have gone during its commit: retry it with the same
    idempotency key. The driver's reason (hosts, paths, database names) goes to
    the server's log, not to the client."""

    def __init__(self, message: str = "the database is not answering; retry with the same idempotency key"):
        super().__init__(message)


def driver_reason(exc: Exception) -> str:
    """The first line of a driver error's own message (SQLAlchemy wraps it as exc.orig)."""
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


class ConfigChanged(FailedPrecondition):
    """A chain's or asset's config differs from what its data was read with (custody/config_pins.py)."""


class ScannerHalted(Exception):
    """The scanner must not go on without an operator (deep reorg, changed settings, a node on
    another network)."""
