"""Dependency aliases: the settings, a database session, storage and the queue, all from the app's state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.auth import PrincipalDep
from service.db import session_scope
from service.settings import Settings
from service.storage import Storage

__all__ = ["PrincipalDep", "QueueDep", "SessionDep", "SettingsDep", "StorageDep"]


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; handlers that write commit before answering (this teardown may run after the response)."""
    with session_scope(request.app.state.session_factory) as session:
        yield session


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_queue(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
QueueDep = Annotated[Celery, Depends(get_queue)]
