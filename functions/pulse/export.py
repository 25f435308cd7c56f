"""export — HTTP function (routes per API.md)."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from werkzeug.wrappers import Request, Response

from pulse.services import Services
from pulse.settings import Settings
from pulse.web.http import HttpFunction, Route


class Export(HttpFunction):
    name = "export"

    def __init__(self, services: Services) -> None:
        self.services = services
        super().__init__(lambda: services.checks(("postgres",)))

    def routes(self) -> Iterable[Route]:
        return []


@functools.cache
def _function() -> Export:
    return Export(Services(Settings.load()))


def export(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
