"""Credentials files of every kind, through the real ee client and google-auth against the fake's token endpoint."""

from __future__ import annotations

import json
import logging
from unittest import mock

import ee
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rsgee.acquire.earthengine.session import (
    CLOUD_PLATFORM_SCOPE,
    EARTHENGINE_SCOPE,
    LOGIN_WITH_SCOPES,
    CredentialsError,
    SessionConfig,
    initialize,
)
from rsgee.testing.earthengine import TOKEN_PATH, FakeEarthEngine


@pytest.fixture()
def fake(monkeypatch):
    """The fake, also standing in for Google's token endpoint.

    google-auth sends ``authorized_user`` refreshes to its own constant endpoint whatever the file
    says (``from_authorized_user_info`` "always overrides" token_uri), so that constant is moved.
    """
    from google.oauth2 import credentials

    with FakeEarthEngine() as server:
        monkeypatch.setattr(credentials, "_GOOGLE_OAUTH2_TOKEN_ENDPOINT", server.url + TOKEN_PATH)
        yield server
    ee.Reset()


def authorized_user(fake, path, refresh_token="1//refresh-ok", **extra):
    """What `gcloud auth application-default login` writes (``extra``: what other tools add, such as ``scopes``)."""
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "764086051850-x.apps.googleusercontent.com",
                                "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty", "refresh_token": refresh_token,
                                "quota_project_id": "fake", **extra}))
    return path


def service_account(fake, path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "fake", "private_key_id": "k1",
                                "private_key": pem, "client_email": "rsgee@fake.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": fake.url + TOKEN_PATH}))
    return path


def external_account(fake, path):
    """A workload-identity-federation file whose subject token comes from a file."""
    subject = path.with_name("subject-token.jwt")
    subject.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln")
    path.write_text(json.dumps({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/ci/providers/gh",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": fake.url + TOKEN_PATH,
        "credential_source": {"file": str(subject)}}))
    return path


@pytest.mark.parametrize("kind, make, grant, scope", [
    ("authorized user", authorized_user, "refresh", None),  # what the login granted, as the earthengine-api asks
    ("service account", service_account, "jwt", " ".join(ee.oauth.SCOPES)),
    ("external account", external_account, "sts", CLOUD_PLATFORM_SCOPE),  # the exchange needs a scope
])
def test_each_credentials_file_type_signs_the_requests(fake, tmp_path, kind, make, grant, scope):
    path = make(fake, tmp_path / "credentials.json")
    config = SessionConfig(project="fake", service_account=path, url=fake.url, workers=2)
    initialize(config)
    assert ee.Number(1).getInfo() == 12  # the fake answers every value:compute with 12
    api = [r for r in fake.requests if r.path != TOKEN_PATH]
    assert api and {fake.grant_of(r.authorization) for r in api} == {grant}
    assert {(r.body["grant"], r.body["scope"]) for r in fake.requests if r.path == TOKEN_PATH} == {(grant, scope)}
    assert config.describe()["auth"] == kind


def test_a_refresh_asking_for_scopes_the_login_did_not_grant_is_one_line_naming_the_login(fake, tmp_path):
    """A default login grants cloud-platform; a file listing the earthengine-api's four scopes asks for more."""
    path = authorized_user(fake, tmp_path / "adc.json", scopes=ee.oauth.SCOPES)
    with pytest.raises(CredentialsError) as info:
        initialize(SessionConfig(project="fake", service_account=path, url=fake.url, workers=2))
    text = str(info.value)
    assert text.count("\n") == 0 and "(invalid_scope: Bad Request)" in text and f"run `{LOGIN_WITH_SCOPES}`" in text
    assert not [r for r in fake.requests if r.path != TOKEN_PATH]
    fake.grant("1//refresh-ok", ("openid", EARTHENGINE_SCOPE, CLOUD_PLATFORM_SCOPE))  # the login that message names
    path = authorized_user(fake, tmp_path / "adc.json", scopes=[EARTHENGINE_SCOPE, CLOUD_PLATFORM_SCOPE])
    initialize(SessionConfig(project="fake", service_account=path, url=fake.url, workers=2))
    assert ee.Number(1).getInfo() == 12


def test_the_login_rsgee_names_asks_for_scopes_of_the_installed_client():
    """Both scopes are the earthengine-api's own; either is what computePixels and image:export accept."""
    assert {EARTHENGINE_SCOPE, CLOUD_PLATFORM_SCOPE} <= set(ee.oauth.SCOPES)
    assert LOGIN_WITH_SCOPES.endswith(f"--scopes={EARTHENGINE_SCOPE},{CLOUD_PLATFORM_SCOPE}")


def test_a_revoked_refresh_token_is_one_line_naming_earthengine_authenticate(fake, tmp_path):
    fake.revoke("1//refresh-gone")
    path = authorized_user(fake, tmp_path / "adc.json", refresh_token="1//refresh-gone")
    with pytest.raises(CredentialsError) as info:
        initialize(SessionConfig(project="fake", service_account=path, url=fake.url, workers=2))
    text = str(info.value)
    assert text.count("\n") == 0 and "run `earthengine authenticate`" in text
    assert "invalid_grant: Token has been expired or revoked" in text
    assert not [r for r in fake.requests if r.path != TOKEN_PATH]  # nothing reached Earth Engine unsigned


def test_files_that_are_no_credentials_are_one_line_errors(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"type": "something_else"}))
    with pytest.raises(CredentialsError, match="expected a service_account, authorized_user or external_account"):
        initialize(SessionConfig(project="p", service_account=tmp_path / "other.json"))
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(CredentialsError, match="is not a JSON credentials file"):
        initialize(SessionConfig(project="p", service_account=tmp_path / "text.json"))
    with pytest.raises(CredentialsError, match="not found"):
        initialize(SessionConfig(project="p", service_account=tmp_path / "missing.json"))
    assert SessionConfig(project="p", service_account=tmp_path / "text.json").describe()["auth"] == "credentials file"


def test_the_required_client_has_the_private_api_rsgee_uses(fake, caplog):
    """setup.cfg's minimum has ``_get_state`` (1.6.12); without it rsgee says so instead of degrading silently."""
    import configparser
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    from rsgee.acquire.earthengine import download

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[3] / "setup.cfg")
    (spec,) = [Requirement(line) for line in config["options"]["install_requires"].split("\n") if "earthengine" in line]
    assert Version("1.6.12") in spec.specifier and Version("1.6.11") not in spec.specifier
    assert Version(ee.__version__) in spec.specifier
    initialize(SessionConfig(project="fake", url=fake.url, auth=False, workers=3))
    state = ee.data._get_state()
    assert state.cloud_api_resource_raw is not None and state.requests_session.get_adapter("http://x")._pool_maxsize == 3
    download._fallback_warned.clear()
    with mock.patch.object(ee.data, "_get_state", side_effect=AttributeError), mock.patch.object(
            ee.data, "computePixels", return_value=b"npy"), caplog.at_level(logging.WARNING, logger="rsgee"):
        assert download.compute_pixels(ee.Image(1), {}) == b"npy"
        download.compute_pixels(ee.Image(1), {})
    assert caplog.text.count("lacks ee.data._get_state().cloud_api_resource_raw") == 1
