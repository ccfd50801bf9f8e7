"""An OpenID Connect provider for the gateway's tests, built on Authlib (Debian's
python3-authlib) and Flask: discovery, JWKS, authorization (PKCE required), token and
refresh endpoints, ID tokens signed RS256.

It stands in for the Authentik/Kanidm of the corpus. There is no login form: the
authorization endpoint approves user `alice` at once, which is what the browser would see
after logging in.

usage: oidc_provider.py ISSUER_PATH CLIENT_ID CLIENT_SECRET REDIRECT_PREFIX TOKEN_TTL
(a redirect URI is accepted when it starts with REDIRECT_PREFIX and ends with
/oauth2/callback: the gateway's port is not known when the provider starts)
Prints the port it listens on (127.0.0.1), then serves until killed. GET /stats answers the
number of codes and refreshes issued.
"""

import os
import sys
import time

os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http on loopback

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.jose import JsonWebKey
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin, ClientMixin
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify
from werkzeug.serving import make_server

path, client_id, client_secret, redirect_prefix, ttl = sys.argv[1:6]
app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
    "authorization_code": int(ttl),
    "refresh_token": int(ttl),
}
app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
server_socket = make_server("127.0.0.1", 0, app)
issuer = f"http://127.0.0.1:{server_socket.server_port}{path}"
key = JsonWebKey.generate_key("RSA", 2048, {"kid": "k1", "use": "sig"}, is_private=True)
stats = {"codes": 0, "refreshes": 0}


class User:
    id = "alice"

    def get_user_id(self):
        return self.id


USER = User()


class Client(ClientMixin):
    def get_client_id(self):
        return client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope

    def check_redirect_uri(self, uri):
        return uri.startswith(redirect_prefix) and uri.endswith("/oauth2/callback")

    def check_client_secret(self, secret):
        return secret == client_secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


CLIENT = Client()


class Code(AuthorizationCodeMixin):
    def __init__(self, code, req):
        self.code = code
        self.redirect_uri = req.redirect_uri
        self.scope = req.scope
        self.nonce = req.data.get("nonce")
        self.code_challenge = req.data.get("code_challenge")
        self.code_challenge_method = req.data.get("code_challenge_method")
        self.auth_time = int(time.time())

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time


codes = {}
refresh_tokens = {}


class Token:
    def __init__(self, t):
        self.t = t

    def get_scope(self):
        return self.t.get("scope", "openid")

    def check_client(self, client):
        return True

    def get_expires_in(self):
        return int(ttl)

    def is_expired(self):
        return False

    def is_revoked(self):
        return False


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]

    def save_authorization_code(self, code, request):
        stats["codes"] += 1
        codes[code] = Code(code, request)

    def query_authorization_code(self, code, client):
        return codes.get(code)

    def delete_authorization_code(self, authorization_code):
        codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return USER


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "client_secret_basic"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        t = refresh_tokens.get(refresh_token)
        return Token(t) if t else None

    def authenticate_user(self, credential):
        return USER

    def revoke_old_credential(self, credential):
        refresh_tokens.pop(credential.t.get("refresh_token"), None)
        stats["refreshes"] += 1


class IdToken(OpenIDCode):
    def exists_nonce(self, nonce, request):
        return False

    def get_jwt_config(self, grant):
        return {"key": key.as_dict(is_private=True), "alg": "RS256", "iss": issuer, "exp": 3600}

    def generate_user_info(self, user, scope):
        return UserInfo(sub=user.id, name="Alice")


def save_token(token, request):
    if "refresh_token" in token:
        refresh_tokens[token["refresh_token"]] = dict(token)


server = AuthorizationServer(app, query_client=lambda cid: CLIENT if cid == client_id else None,
                             save_token=save_token)
server.register_grant(CodeGrant, [IdToken(require_nonce=True), CodeChallenge(required=True)])
server.register_grant(RefreshGrant)


@app.route(path + "/.well-known/openid-configuration")
def discovery():
    return jsonify({
        "issuer": issuer,
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    })


@app.route(path + "/jwks")
def jwks():
    return jsonify({"keys": [key.as_dict(is_private=False)]})


@app.route(path + "/authorize")
def authorize():
    return server.create_authorization_response(grant_user=USER)


@app.route(path + "/token", methods=["POST"])
def token():
    return server.create_token_response()


@app.route("/stats")
def get_stats():
    return jsonify(stats)


print(server_socket.server_port, flush=True)
server_socket.serve_forever()
