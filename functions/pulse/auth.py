"""auth — HTTP function (routes per API.md)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from werkzeug.wrappers import Request, Response

from pulse.services import Services
from pulse.settings import Settings
from pulse.web.http import HttpFunction, Route


class Auth(HttpFunction):
    name = "auth"

    def __init__(self, services: Services) -> None:
        self.services = services
        super().__init__(lambda: services.checks(("postgres",)))

    def routes(self) -> Iterable[Route]:
        return []


@functools.cache
def _function() -> Auth:
    return Auth(Services(Settings.load()))


def auth(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
