"""The whole OpenID Connect flow against a running tessera, as an independent relying party sees it.

Every protocol step here is authlib's: its OAuth2Session builds the authorization request
(state, nonce, PKCE S256), redeems the code, refreshes and revokes; its OpenID Connect client code
(the `parse_id_token` that authlib's Flask, Django and Starlette integrations run) verifies each
id_token's signature against the provider's `jwks_uri` and validates its claims; its metadata
models validate the discovery document. This script only plays the browser (it fills in the login
form) and states the expectations. It shares no code with tessera.

Input (environment): ISSUER, CA_FILE (PEM of the CA to trust), USERNAME, PASSWORD.
Output: one JSON line on stdout on success; otherwise a message on stderr and exit status 1.
"""

import base64
import json
import os
import re
import sys
from html import unescape
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import authlib
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.sync_openid import OpenIDMixin
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2 import rfc8414
from authlib.oidc import discovery, rpinitiated
from authlib.oidc.core import UserInfo
from joserfc.errors import JoseError

CLIENT_ID = "kubernetes"
# A loopback redirect (RFC 8252 §7.3): tessera accepts any port for this public client.
REDIRECT_URI = "http://127.0.0.1:53682/callback"
SCOPE = "openid profile email groups"
TIMEOUT = 30
# Seconds of clock skew the id_token time checks allow; client and provider share this machine.
LEEWAY = 5


class FlowFailure(Exception):
    """An expectation about the provider did not hold."""


def main():
    env = read_env()
    step = "start"
    try:
        step = "discovery"
        metadata = discover(env)
        step = "authorization request"
        client = OAuth2Session(
            client_id=CLIENT_ID,
            token_endpoint_auth_method="none",
            revocation_endpoint_auth_method="none",
            scope=SCOPE,
            redirect_uri=REDIRECT_URI,
            code_challenge_method="S256",
            **session_options(env["CA_FILE"]),
            # authlib refreshes before a request when the access token expires within `leeway`
            # seconds (default 60); tessera's access tokens live 60 s, so the default would
            # refresh behind our back before /userinfo.
            leeway=LEEWAY,
        )
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        url, _ = client.create_authorization_url(
            metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
        )
        step = "login form"
        callback = sign_in(env, url)
        step = "authorization response"
        check_authorization_response(callback, env["ISSUER"])
        step = "code exchange"
        tokens = client.fetch_token(
            metadata["token_endpoint"],
            authorization_response=callback,
            state=state,
            code_verifier=verifier,
        )
        step = "id_token verification"
        rp = RelyingParty(metadata, env["CA_FILE"])
        expected = expected_claims(env)
        first = verify_id_token(rp, tokens, nonce, expected)
        step = "id_token negative controls"
        verifier_rejects_forgeries(rp, tokens, nonce, expected)
        step = "refresh"
        first_refresh = tokens["refresh_token"]
        refreshed = client.refresh_token(metadata["token_endpoint"], refresh_token=first_refresh)
        second_refresh = refreshed["refresh_token"]
        expect(second_refresh != first_refresh, "the refresh token did not rotate")
        step = "refreshed id_token verification"
        second = verify_id_token(rp, refreshed, None, expected)
        check_refreshed_id_token(first, second)
        step = "userinfo"
        userinfo = fetch_userinfo(client, metadata)
        expect(
            userinfo["sub"] == second["sub"],
            f"userinfo sub {userinfo['sub']!r} is not the id_token's {second['sub']!r}",
        )
        expect(
            client.token["refresh_token"] == second_refresh,
            "authlib refreshed again before /userinfo: the access token looked expired",
        )
        step = "revocation"
        revoke_then_refresh_fails(client, metadata, second_refresh)
    except FlowFailure as failure:
        fail(step, str(failure))
    except OAuthError as error:
        fail(step, f"the provider answered {error.error}: {error.description}")
    except JoseError as error:
        fail(step, f"authlib rejected the id_token: {error.error}: {error.description}")
    except (requests.RequestException, ValueError, KeyError) as error:
        fail(step, f"{type(error).__name__}: {error}")

    print(
        json.dumps(
            {
                "ok": True,
                "authlib": authlib.__version__,
                "issuer": env["ISSUER"],
                "sub": first["sub"],
                "id_token_alg": jws_header(tokens["id_token"])["alg"],
                "id_token_kid": jws_header(tokens["id_token"]).get("kid"),
                "verified": [
                    "discovery metadata (RFC 8414, OIDC Discovery, RP-Initiated Logout)",
                    "state, iss in the authorization response (RFC 9207)",
                    "code exchange with PKCE S256 and no client secret",
                    "id_token signature against jwks_uri; iss, aud, sub, exp, iat, nonce, azp",
                    "a forged payload, a wrong nonce and a wrong audience are rejected",
                    "refresh rotates the refresh token",
                    "the refreshed id_token verifies and keeps iss, sub, aud, azp, auth_time",
                    "userinfo sub matches the id_token",
                    "revoked refresh token answers invalid_grant",
                ],
            }
        )
    )


class RelyingParty(OpenIDMixin):
    """authlib's OpenID Connect client logic (`OpenIDMixin.parse_id_token`), bound to this
    provider's metadata through the same hooks authlib's framework integrations implement."""

    def __init__(self, metadata, ca_file):
        self.client_id = CLIENT_ID
        self.server_metadata = dict(metadata)
        self._ca_file = ca_file

    def load_server_metadata(self):
        return self.server_metadata

    def _get_session(self):
        return OAuth2Session(**session_options(self._ca_file))


def session_options(ca_file):
    """Options for every authlib session: trust only CA_FILE and ignore the environment, because
    requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE override a session's own `verify`, and
    a proxy has no business between us and a loopback provider."""
    return {"verify": ca_file, "trust_env": False, "default_timeout": TIMEOUT}


def browser(env):
    """A plain requests session, with a cookie jar for the CSRF cookie, set up like authlib's."""
    session = requests.Session()
    session.verify = env["CA_FILE"]
    session.trust_env = False
    return session


def read_env():
    names = ["ISSUER", "CA_FILE", "USERNAME", "PASSWORD"]
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        fail("start", f"set the environment variables {', '.join(missing)}")
    return {name: os.environ[name] for name in names}


def discover(env):
    """Fetches the discovery document and lets authlib's metadata models validate it."""
    url = env["ISSUER"] + "/.well-known/openid-configuration"
    response = browser(env).get(url, timeout=TIMEOUT)
    response.raise_for_status()
    metadata = response.json()
    # OpenID Connect Discovery 1.0 §4.3: the issuer must be exactly the one we asked.
    expect(
        metadata.get("issuer") == env["ISSUER"],
        f"discovery issuer {metadata.get('issuer')!r} is not {env['ISSUER']!r}",
    )
    rfc8414.AuthorizationServerMetadata(metadata).validate()
    discovery.OpenIDProviderMetadata(metadata).validate(
        metadata_classes=[rpinitiated.OpenIDProviderMetadata]
    )
    for field in ["userinfo_endpoint", "revocation_endpoint"]:
        expect(field in metadata, f"discovery has no {field}")
    expect(
        "S256" in metadata.get("code_challenge_methods_supported", []),
        "discovery does not offer PKCE S256",
    )
    expect(
        "none" in metadata.get("token_endpoint_auth_methods_supported", []),
        "discovery does not offer public clients (auth method none)",
    )
    return metadata


def sign_in(env, authorization_url):
    """Plays the browser: shows the login form, submits it, returns the redirect to the client."""
    session = browser(env)
    page = session.get(authorization_url, allow_redirects=False, timeout=TIMEOUT)
    expect(
        page.status_code == 200,
        f"/authorize answered {page.status_code}, not the login form: {page_error(page.text)}",
    )
    form = LoginForm.parse(page.text)
    fields = list(form.hidden) + [("username", env["USERNAME"]), ("password", env["PASSWORD"])]
    action = urljoin(page.url, form.action)
    answer = session.post(action, data=fields, allow_redirects=False, timeout=TIMEOUT)
    expect(
        answer.status_code == 303,
        f"the login form answered {answer.status_code}, not 303: {page_error(answer.text)}",
    )
    return answer.headers["Location"]


def check_authorization_response(callback, issuer):
    expect(callback.startswith(REDIRECT_URI + "?"), f"redirected to {callback}, not the client")
    params = parse_qs(urlsplit(callback).query)
    expect("error" not in params, f"the authorization response is an error: {params}")
    # RFC 9207 §2.4, advertised by authorization_response_iss_parameter_supported.
    expect(params.get("iss") == [issuer], f"authorization response iss is {params.get('iss')}")


def expected_claims(env):
    """The claim values authlib must find (joserfc claims options)."""
    return {
        "iss": {"essential": True, "value": env["ISSUER"]},
        "aud": {"essential": True, "value": CLIENT_ID},
        "sub": {"essential": True, "value": env["USERNAME"]},
    }


def verify_id_token(rp, tokens, nonce, expected):
    """authlib verifies the signature with the keys at jwks_uri (only the algorithms discovery
    lists), then iss, aud, sub, exp, iat, azp, at_hash if present and nonce if given."""
    expect("id_token" in tokens, "the token response has no id_token")
    claims = rp.parse_id_token(tokens, nonce, claims_options=copy(expected), leeway=LEEWAY)
    expect(claims is not None, "authlib found no id_token")
    return claims


def verifier_rejects_forgeries(rp, tokens, nonce, expected):
    """Proves the verification above is not a rubber stamp."""
    header, payload, signature = tokens["id_token"].split(".")
    claims = json.loads(b64decode(payload))
    claims["sub"] = "mallory"
    forged = ".".join([header, b64encode(json.dumps(claims).encode()), signature])
    wrong_audience = copy(expected)
    wrong_audience["aud"] = {"essential": True, "value": "someone-else"}
    cases = [
        ("another payload under its signature", dict(tokens, id_token=forged), nonce, expected),
        ("a different nonce", tokens, "another-nonce", expected),
        ("another audience", tokens, nonce, wrong_audience),
    ]
    for name, candidate, candidate_nonce, options in cases:
        try:
            rp.parse_id_token(
                candidate, candidate_nonce, claims_options=copy(options), leeway=LEEWAY
            )
        except JoseError:
            continue
        raise FlowFailure(f"authlib accepted an id_token with {name}")


def check_refreshed_id_token(first, second):
    """OpenID Connect Core §12.2: same iss, sub, aud, azp and auth_time; no nonce."""
    for claim in ["iss", "sub", "aud", "azp", "auth_time"]:
        expect(
            first.get(claim) == second.get(claim),
            f"the refreshed id_token changed {claim}: "
            f"{first.get(claim)!r} -> {second.get(claim)!r}",
        )
    expect("nonce" not in second, "the refreshed id_token carries a nonce")


def fetch_userinfo(client, metadata):
    response = client.get(metadata["userinfo_endpoint"])
    expect(
        response.status_code == 200,
        f"/userinfo answered {response.status_code}: {response.text}",
    )
    return UserInfo(response.json())


def revoke_then_refresh_fails(client, metadata, refresh_token):
    response = client.revoke_token(
        metadata["revocation_endpoint"], token=refresh_token, token_type_hint="refresh_token"
    )
    expect(response.status_code == 200, f"/revoke answered {response.status_code}: {response.text}")
    try:
        client.refresh_token(metadata["token_endpoint"], refresh_token=refresh_token)
    except OAuthError as error:
        expect(
            error.error == "invalid_grant",
            f"refresh with a revoked token answered {error.error}, not invalid_grant",
        )
        return
    raise FlowFailure("a revoked refresh token still refreshed")


class LoginForm(HTMLParser):
    """The first POST form of a page: its action and hidden inputs, entities decoded."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.hidden = []
        self._inside = False

    @classmethod
    def parse(cls, html):
        form = cls()
        form.feed(html)
        form.close()
        expect(form.action is not None, "the page has no POST form")
        return form

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None and attrs.get("method", "").lower() == "post":
            self.action = attrs.get("action") or ""
            self._inside = True
        elif tag == "input" and self._inside and attrs.get("type") == "hidden":
            self.hidden.append((attrs.get("name", ""), attrs.get("value") or ""))

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False


def page_error(html):
    """The error message of one of tessera's pages, or the start of an unexpected one."""
    found = re.search(r'<p class="error"[^>]*>(.*?)</p>', html, re.DOTALL)
    return unescape(found.group(1)) if found else html[:200]


def jws_header(jwt):
    return json.loads(b64decode(jwt.split(".")[0]))


def b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def copy(options):
    """authlib consumes claims options (it pops `validate` hooks), so each call gets its own."""
    return {name: dict(option) for name, option in options.items()}


def expect(condition, message):
    if not condition:
        raise FlowFailure(message)


def fail(step, message):
    print(f"authlib flow failed at {step}: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
