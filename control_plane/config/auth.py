"""auth: the gateway's Google credentials, and other named profiles (other producer projects)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from .fields import Duration, Strict


def _check_credentials(value: str) -> str:
    if value == "adc" or (value.startswith("service_account:") and len(value) > len("service_account:")):
        return value
    raise ValueError(f"bad credentials {value!r}: expected adc or service_account:/path/to/key.json")


class AuthProfile(Strict):
    """One set of Google credentials; its access token is shared by every region that uses it."""

    credentials: Annotated[str, AfterValidator(_check_credentials)] = "adc"
    impersonate: str | None = None  # a service-account email: tokens are minted for it via IAM
    scopes: list[str] = ["https://www.googleapis.com/auth/cloud-platform"]


DEFAULT_PROFILE = "default"


class Auth(AuthProfile):
    refresh_margin: Duration = Field(300.0, gt=0)
    profiles: dict[str, AuthProfile] = {}  # other credentials, named by a region's or model's `auth:`

    def profile(self, name: str) -> AuthProfile:
        return self if name == DEFAULT_PROFILE else self.profiles[name]
