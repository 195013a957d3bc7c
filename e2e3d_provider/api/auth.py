"""Authentication and authorization for the results API, through Airflow's auth manager.

Airflow does not authenticate FastAPI apps mounted by plugins, so this one dependency, applied
to every route but health, does it: it reads the same JWT the Airflow REST API accepts (an
``Authorization: Bearer`` header, or the UI's session cookie), resolves the user with the
configured auth manager, and checks the user's permission on the reconstruction DAG's runs:
reading results needs ``GET``, handing out upload URLs needs ``POST`` (the right to trigger runs).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from e2e3d_provider.api.errors import ApiError

RESULTS_DAG_ID = "e2e3d_reconstruction"
JWT_COOKIE = "_token"  # the cookie Airflow's UI keeps its JWT in

bearer = HTTPBearer(auto_error=False, description="A JWT from Airflow's POST /auth/token, as for the REST API.")


def auth_manager() -> Any:
    """The auth manager the api-server initialized, or one initialized here (tests, standalone use)."""
    from airflow.api_fastapi.app import create_auth_manager, get_auth_manager

    try:
        return get_auth_manager()
    except RuntimeError:
        manager = create_auth_manager()
        manager.init()
        return manager


async def authorized_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Any:
    """The authenticated user, if allowed this request's method on the reconstruction DAG's runs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from jwt import ExpiredSignatureError, InvalidTokenError

    token = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else None
    token = token or request.cookies.get(JWT_COOKIE)
    if not token:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "unauthenticated",
            "Not authenticated: send an Airflow JWT as a Bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    manager = auth_manager()
    try:
        user = await manager.get_user_from_token(token)
    except ExpiredSignatureError:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED, "token_expired", "Token expired", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    except InvalidTokenError:
        raise ApiError(status.HTTP_403_FORBIDDEN, "invalid_token", "Invalid JWT token") from None
    method = "GET" if request.method in ("GET", "HEAD") else "POST"
    try:
        allowed = manager.is_authorized_dag(
            method=method, user=user, access_entity=DagAccessEntity.RUN, details=DagDetails(id=RESULTS_DAG_ID)
        )
    except Exception:  # a user the auth manager cannot place (e.g. an unknown role) gets nothing
        allowed = False
    if not allowed:
        raise ApiError(
            status.HTTP_403_FORBIDDEN,
            "forbidden",
            f"user may not {'read' if method == 'GET' else 'create'} runs of {RESULTS_DAG_ID}",
        )
    return user
