"""Domain errors of the service. Services raise these; `app.api.errors` maps them to HTTP.

Each has a stable machine-readable ``code`` that API clients may switch on.
"""

from __future__ import annotations

from typing import Any


class WajahError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


# --- auth (the API layer maps these to 401 / 403) ------------------------------------------


class UnauthorizedError(WajahError):
    code = "unauthorized"


class ForbiddenError(WajahError):
    code = "forbidden"


class RateLimitedError(WajahError):
    """The API key used up its request rate; `details["retry_after_s"]` says when to retry."""

    code = "rate_limited"


# --- not found: also what another org's ids get (no existence oracle) ----------------------


class NotFoundError(WajahError):
    code = "not_found"


class SubjectNotFoundError(NotFoundError):
    code = "subject_not_found"


class EnrollmentNotFoundError(NotFoundError):
    code = "enrollment_not_found"


class ApiKeyNotFoundError(NotFoundError):
    code = "api_key_not_found"


# --- bad requests ---------------------------------------------------------------------------


class InvalidRequestError(WajahError):
    code = "invalid_request"


class TooManyFramesError(InvalidRequestError):
    code = "too_many_frames"


class RequestTooLargeError(InvalidRequestError):
    code = "request_too_large"


class InvalidProbeError(InvalidRequestError):
    """A probe vector of the wrong size, model, or not unit-length."""

    code = "invalid_probe"


class InvalidPiiError(InvalidRequestError):
    code = "invalid_pii"


class InvalidSettingsError(InvalidRequestError):
    code = "invalid_settings"


class InvalidCursorError(InvalidRequestError):
    code = "invalid_cursor"


class NoUsableFrameError(WajahError):
    """Every frame of a bundle was refused; `details["frames"]` says why, per frame."""

    code = "no_usable_frame"


# --- conflicts ------------------------------------------------------------------------------


class ConflictError(WajahError):
    code = "conflict"


class DuplicateFaceError(ConflictError):
    """`duplicate_check=reject` found the face enrolled under another subject."""

    code = "duplicate_face"


class GoneError(WajahError):
    """What was asked for existed and was erased for good (HTTP 410)."""

    code = "gone"


class SubjectErasedError(GoneError):
    code = "subject_erased"


class EnrollmentNotActiveError(ConflictError):
    code = "enrollment_not_active"


class IdempotencyKeyReusedError(ConflictError):
    """The Idempotency-Key was used before with a different request."""

    code = "idempotency_key_reused"


class IdempotencyInFlightError(ConflictError):
    code = "idempotency_request_in_flight"


class ModelPackMismatchError(ConflictError):
    """The org's index is pinned to another model pack than the one being served."""

    code = "model_pack_mismatch"


class OwnKeyRevocationError(ConflictError):
    """A key may not revoke itself: the org would learn of its lock-out only afterwards."""

    code = "cannot_revoke_own_key"


class OrgClosedError(ConflictError):
    """The org was closed (`wajah orgs close`): it gets no new keys, and closes once."""

    code = "org_closed"


class LastAdminKeyError(ConflictError):
    """Revoking this key would leave the org without a working admin key."""

    code = "last_admin_key"


class ServiceNotReadyError(WajahError):
    code = "not_ready"


class IndexNotCurrentError(ServiceNotReadyError):
    """This replica could not bring an index up to the database's position in time: the
    request is refused rather than answered from a stale copy (503, retry)."""

    code = "index_not_current"


# --- active liveness challenges (app.services.challenges) ------------------------------------


class LivenessChallengeNotFoundError(NotFoundError):
    """No challenge of this org has that nonce (another org's nonce, or garbage, alike)."""

    code = "liveness_challenge_not_found"


class LivenessChallengeUsedError(ConflictError):
    """The challenge's nonce was used before: each one answers one capture bundle."""

    code = "liveness_challenge_used"


class LivenessChallengeExpiredError(GoneError):
    """The challenge expired unused (about two minutes after it was issued)."""

    code = "liveness_challenge_expired"


# --- liveness (app.services.liveness) --------------------------------------------------------


class LivenessFailedError(WajahError):
    """The org's liveness policy is ``reject`` and the capture was judged a spoof:
    `details["reasons"]` names why, `details["liveness"]` carries the report (scores only).
    Nothing of the request was stored."""

    code = "liveness_failed"
