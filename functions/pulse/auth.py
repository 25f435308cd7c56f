"""auth — HTTP function: accounts, sign-in tokens, projects, API keys, members,
the JWKS every other function verifies access tokens against (routes per API.md;
the security model is in docs/security.md)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from pulse.core import accounts, invitations
from pulse.core.accounts import Accounts
from pulse.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from pulse.security.passwords import Passwords
from pulse.security.ratelimit import LoginBackoff, client_ip
from pulse.security.tokens import FileKeys, jwks
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response

MAX_BODY_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store"}  # token responses (RFC 6749 5.1)


class Auth(HttpFunction):
    name = "auth"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.trusted = services.settings.trusted_networks
        super().__init__(services.readiness(self.name))

    def routes(self) -> Iterable[Route]:
        project = "/v1/projects/<project_id>"
        return [
            Route("POST", "/v1/auth/register", self.register, "register"),
            Route("POST", "/v1/auth/login", self.login, "login"),
            Route("POST", "/v1/auth/refresh", self.refresh, "refresh"),
            Route("POST", "/v1/auth/logout", self.logout, "logout"),
            Route("GET", "/.well-known/jwks.json", self.jwks, "jwks"),
            Route("POST", "/v1/projects", self.create_project, "create-project"),
            Route("GET", "/v1/projects", self.list_projects, "list-projects"),
            Route("PATCH", project, self.update_project, "update-project"),
            Route("POST", f"{project}/api-keys", self.create_key, "create-key"),
            Route("GET", f"{project}/api-keys", self.list_keys, "list-keys"),
            Route("DELETE", f"{project}/api-keys/<key_id>", self.revoke_key, "revoke-key"),
            Route("GET", f"{project}/members", self.list_members, "list-members"),
            Route("POST", f"{project}/members", self.invite, "invite-member"),
            Route("DELETE", f"{project}/members/<user_id>", self.remove_member, "remove-member"),
            Route("GET", f"{project}/invitations", self.project_invitations, "project-invitations"),
            Route("DELETE", f"{project}/invitations/<invitation_id>", self.revoke_invitation, "revoke-invitation"),
            Route("GET", "/v1/invitations", self.my_invitations, "my-invitations"),
            Route("POST", "/v1/invitations/<invitation_id>/accept", self.accept_invitation, "accept-invitation"),
            Route("GET", "/v1/admin/users", self.admin_users, "admin-users"),
        ]

    @functools.cached_property
    def accounts(self) -> Accounts:
        db = self.services.db
        return Accounts(db, Passwords(self.settings.password_scrypt_n),
                        LoginBackoff(db, self.settings.login_lock_after, self.settings.login_lock_max_s),
                        self.services.issuer, self.settings.refresh_token_ttl_s)

    # Request helpers -------------------------------------------------------

    def body(self, request: Request) -> dict[str, Any]:
        raw = read_body(request, MAX_BODY_BYTES)
        try:
            return accounts.body_of(orjson.loads(raw or b"{}"))
        except orjson.JSONDecodeError as exc:
            raise InvalidInput.field("body", "is not valid JSON") from exc

    def limit(self, request: Request, name: str) -> None:
        ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), self.trusted)
        self.services.limiter.hit(self.services.limit(name), ip)

    def user(self, request: Request) -> str:
        """The signed-in user's id, from ``Authorization: Bearer <access token>``."""
        credential = extract(request)
        verifier = self.services.verifier
        if credential is None or credential.kind != "bearer" or verifier is None:
            raise Unauthorized("sign in first: send Authorization: Bearer <access token>")
        return verifier.verify(credential.value).subject

    def member(self, request: Request, project_id: str, role: str) -> tuple[str, str]:
        user = self.user(request)
        project = accounts.check_uuid("project_id", project_id)
        accounts.require_role(self.services.db, project, user, role)
        return user, project

    # Accounts and sessions -------------------------------------------------

    def register(self, request: Request) -> Response:
        self.limit(request, "register")
        return json_response(self.accounts.register(self.body(request)), 201)

    def login(self, request: Request) -> Response:
        self.limit(request, "login")
        return json_response(self.accounts.login(self.body(request)).as_dict(), headers=NO_STORE)

    def refresh(self, request: Request) -> Response:
        return json_response(self.accounts.refresh(self.body(request)).as_dict(), headers=NO_STORE)

    def logout(self, request: Request) -> Response:
        self.accounts.logout(self.body(request))
        return Response(status=204)

    @functools.cached_property
    def published(self) -> FileKeys:
        """Every key next to the signing key (re-read every 30 s, so a key added for a rotation appears)."""
        self.services.issuer  # noqa: B018 - fails clearly when no signing key is configured
        return FileKeys(Path(self.settings.jwt_private_key_file or ""))

    def jwks(self, request: Request) -> Response:
        return Response(orjson.dumps(jwks(self.published.ring())), content_type="application/json",
                        headers={"Cache-Control": f"public, max-age={int(self.settings.jwks_cache_ttl_s)}"})

    # Projects, keys, members -----------------------------------------------

    def create_project(self, request: Request) -> Response:
        user = self.user(request)
        body = self.body(request)
        return json_response(accounts.create_owned_project(self.services.db, user, body.get("name")), 201)

    def list_projects(self, request: Request) -> Response:
        return json_response(accounts.projects_of(self.services.db, self.user(request)))

    def update_project(self, request: Request, project_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        return json_response(accounts.update_project(self.services.db, project, self.body(request)))

    def create_key(self, request: Request, project_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        body = self.body(request)
        name = accounts.check_text("name", body.get("name"), required=True)
        key, secret = self.services.keys.create(project, name or "", body.get("scopes"))
        return json_response({"key_id": key.key_id, "api_key": secret, "prefix": key.prefix,
                              "scopes": sorted(key.scopes), "name": name}, 201, NO_STORE)

    def list_keys(self, request: Request, project_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        return json_response(self.services.keys.list(project))

    def revoke_key(self, request: Request, project_id: str, key_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        if not self.services.keys.revoke(project, accounts.check_uuid("key_id", key_id)):
            raise NotFound("no such active key in this project")
        return Response(status=204)

    def list_members(self, request: Request, project_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        return json_response(accounts.list_members(self.services.db, project))

    def invite(self, request: Request, project_id: str) -> Response:
        user, project = self.member(request, project_id, "owner")
        body = self.body(request)
        self.services.limiter.hit(self.services.limit("invite"), user)
        self.services.limiter.hit(self.services.limit("project_invite"), project)
        answer = invitations.invite(self.services.db, project, user, body, self.settings.invitation_ttl_s)
        return json_response(answer, 202)

    def project_invitations(self, request: Request, project_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        return json_response(invitations.of_project(self.services.db, project))

    def revoke_invitation(self, request: Request, project_id: str, invitation_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        invitations.revoke(self.services.db, project, accounts.check_uuid("invitation_id", invitation_id))
        return Response(status=204)

    def my_invitations(self, request: Request) -> Response:
        return json_response(invitations.of_user(self.services.db, self.user(request)))

    def accept_invitation(self, request: Request, invitation_id: str) -> Response:
        user = self.user(request)
        return json_response(invitations.accept(self.services.db, user,
                                                accounts.check_uuid("invitation_id", invitation_id)))

    def remove_member(self, request: Request, project_id: str, user_id: str) -> Response:
        _, project = self.member(request, project_id, "owner")
        accounts.remove_member(self.services.db, project, accounts.check_uuid("user_id", user_id))
        return Response(status=204)

    def admin_users(self, request: Request) -> Response:
        if not accounts.is_admin(self.services.db, self.user(request)):
            raise Forbidden("instance admins only")
        limit, offset = accounts.check_page(request.args.get("limit"), request.args.get("offset"))
        return json_response(accounts.list_users(self.services.db, limit, offset))


@functools.cache
def _function() -> Auth:
    return Auth(Services(Settings.load()))


def auth(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
