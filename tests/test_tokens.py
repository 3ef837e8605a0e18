"""Credentials construction and auth-profile config rules (no network)."""

from __future__ import annotations

import pytest
from google.auth import impersonated_credentials
from google.oauth2 import service_account

from control_plane.config import AuthProfile, ConfigError, parse_config
from control_plane.lab.fake_oauth import write_service_account_key
from control_plane.tokens import make_credentials

BASE = """
project: p
regions:
  us-central1: {address: 10.0.0.1, auth: %s}
models:
  m: {default: true, endpoints: {us-central1: "1"}%s}
auth:
  credentials: adc
  profiles:
    other: {credentials: "service_account:/k.json", impersonate: sa@p.iam.gserviceaccount.com}
"""


def test_service_account_profile(tmp_path):
    key = write_service_account_key(tmp_path / "k.json", "http://127.0.0.1:1/token")
    creds = make_credentials(AuthProfile(credentials=f"service_account:{key}"))
    assert isinstance(creds, service_account.Credentials)
    assert creds.scopes == ["https://www.googleapis.com/auth/cloud-platform"]


def test_impersonation_wraps_the_source_credentials(tmp_path):
    key = write_service_account_key(tmp_path / "k.json", "http://127.0.0.1:1/token")
    creds = make_credentials(AuthProfile(credentials=f"service_account:{key}",
                                         impersonate="vertex-caller@p.iam.gserviceaccount.com"))
    assert isinstance(creds, impersonated_credentials.Credentials)
    assert creds._target_principal == "vertex-caller@p.iam.gserviceaccount.com"


def test_profile_resolution_model_wins_over_region():
    config = parse_config(BASE % ("other", ", auth: default"))
    assert config.profile_for("m", "us-central1") == "default"
    config = parse_config(BASE % ("other", ""))
    assert config.profile_for("m", "us-central1") == "other"
    assert config.profiles_in_use() == ["other"]


def test_unknown_profile_and_bad_credentials_are_rejected():
    with pytest.raises(ConfigError) as err:
        parse_config((BASE % ("nope", "")).replace("credentials: adc", "credentials: gcloud"))
    text = str(err.value)
    assert "regions.us-central1.auth: unknown auth profile 'nope'" in text
    assert "auth.credentials: bad credentials 'gcloud'" in text
