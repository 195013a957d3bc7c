"""The results API's one error schema: every 4xx and 5xx answers an :class:`ErrorBody`.

``code`` is machine-readable and stable (a client branches on it, never on ``detail``, whose words may
change); ``status`` repeats the HTTP status so a body logged alone still says it; ``detail`` says what and
how to fix it, in words (a list of problems when a request has several, each validation problem as
``{loc, msg, type}``). Routes raise :class:`ApiError` with their code; anything else that reaches the app's
handlers (Starlette's own 404/405, the auth dependency's plain ``HTTPException``) gets the code of its status.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

#: every ``code`` the API answers, with what it means (the docs and the OpenAPI descriptions cite these)
CODES: dict[str, str] = {
    "unauthenticated": "no Airflow JWT was sent (Bearer token or the UI's cookie)",
    "token_expired": "the JWT has expired: get a new one from POST /auth/token",
    "invalid_token": "the JWT cannot be read or was not signed by this Airflow",
    "forbidden": "the user may not read (GET) or create (POST) runs of the reconstruction DAG",
    "not_found": "no such path",
    "method_not_allowed": "the path does not take this method",
    "job_not_found": "no job of that id is recorded",
    "file_not_found": "the job's published manifest names no such file",
    "variant_not_found": "the job has no files at the level of detail or variant asked for",
    "nothing_to_view": "the job published no 3D Tiles tileset and no COPC point cloud",
    "job_damaged": "a scrub found the job's results damaged beyond repair: they are not served",
    "results_incomplete": "the job has no SUCCESS marker: its results are not (or no longer) complete",
    "manifest_invalid": "a stored manifest cannot be used (malformed, another job's, or not matching the objects)",
    "invalid_id": "a job id or dataset id is malformed",
    "invalid_path": "a file path is malformed ('..', '.', empty segments, absolute)",
    "invalid_cursor": "the cursor is not one this API handed out",
    "invalid_filter": "a filter's value is not allowed",
    "upload_refused": "the upload request names files a grant cannot cover (names, sizes, types)",
    "name_taken": "a file of that name is stored already: a grant never replaces one",
    "blob_missing": "a reused file's content is not stored",
    "commit_conflict": "another commit of this dataset is running",
    "body_too_large": "the request body is over the API's bound",
    "validation_failed": "a parameter or the body does not match the schema",
    "storage_unavailable": "object storage cannot be reached (after the API's short retry window)",
    "metadata_unavailable": "the metadata database cannot be reached",
    "storage_failed": "object storage answered the request with an error",
    "internal_error": "an unexpected error: the server log has the traceback",
}

#: the code of a plain ``HTTPException`` (one not raised as :class:`ApiError`), by status
STATUS_CODES: dict[int, str] = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    422: "validation_failed",
    500: "internal_error",
    502: "storage_failed",
    503: "storage_unavailable",
}


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer of the API."""

    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(description=f"machine-readable reason, one of: {', '.join(CODES)}")
    detail: str | list[Any] = Field(
        description="what went wrong and how to fix it, in words; a list when there are several problems "
        "(validation problems as {loc, msg, type}, never echoing the input)"
    )
    errors: int | None = Field(None, description="validation only: how many problems there were (detail is bounded)")


class ApiError(HTTPException):
    """An HTTP error with its machine-readable ``code`` (one of :data:`CODES`)."""

    def __init__(self, status: int, code: str, detail: Any, headers: dict[str, str] | None = None) -> None:
        assert code in CODES, code
        super().__init__(status, detail, headers)
        self.code = code


def error_response(status: int, code: str, detail: Any, headers: Any = None, **extra: Any) -> JSONResponse:
    """An :class:`ErrorBody` as a response."""
    body = ErrorBody(status=status, code=code, detail=detail, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def code_of(err: Any) -> str:
    """The code of an HTTP exception: its own (:class:`ApiError`), else the one of its status."""
    code = getattr(err, "code", None)
    if isinstance(code, str) and code in CODES:
        return code
    status = int(getattr(err, "status_code", 500))
    return STATUS_CODES.get(status, "internal_error" if status >= 500 else "validation_failed")


#: what each error status means in the OpenAPI (a route's own description, when it gives one, wins)
DESCRIPTIONS: dict[int, str] = {
    401: "not authenticated (code unauthenticated, token_expired)",
    403: "a bad token (invalid_token), or no permission on the reconstruction DAG's runs (forbidden)",
    404: "not found",
    409: "conflict",
    413: "request body too large (body_too_large)",
    422: "malformed parameters or body (validation_failed, invalid_id ...)",
    500: "unexpected server error (internal_error)",
    502: "object storage failed the request (storage_failed)",
    503: "object storage or the metadata database is unavailable (storage_unavailable, metadata_unavailable)",
}


def errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status given as ``e404="unknown job (job_not_found)"``, all
    with the :class:`ErrorBody` model."""
    out: dict[int | str, dict[str, Any]] = {}
    for key, description in described.items():
        status = int(key.lstrip("e"))
        out[status] = {"model": ErrorBody, "description": description or DESCRIPTIONS[status]}
    return out


def standard(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The generic ``responses=`` entries of ``statuses`` (a router's defaults)."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}
