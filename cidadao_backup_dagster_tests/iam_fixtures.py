"""A moto S3 server with IAM enforcement on, for tests that run jobs under a restricted identity.

moto's server checks IAM policies once INITIAL_NO_AUTH_ACTION_COUNT requests have been served; the
`/moto-api/reset-auth` endpoint sets that count (0 = enforce from now on). Enforcement is process-wide, so an
IAM test starts its own server (`IamS3`) instead of sharing the session's. Under enforcement only keys of IAM
users are accepted: `IamS3` creates an `admin` user (Action "*") for setup and inspection.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

from .conftest import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY, MotoServer

ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def enforce_iam(endpoint: str, on: bool) -> None:
    """moto's server enforces IAM policies after INITIAL_NO_AUTH_ACTION_COUNT requests; 0 = from now on."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if on else b"inf",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )  # not a form: moto reads the raw body
    urllib.request.urlopen(request, timeout=10).close()


def client(service: str, endpoint: str, keys: tuple[str, str], *, max_attempts: int = 3):
    key_id, secret = keys
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"mode": "standard", "max_attempts": max_attempts}, s3={"addressing_style": "path"}),
    )


def create_user(iam, name: str, policy: dict) -> tuple[str, str]:
    """An IAM user holding `policy` inline; returns its (access key id, secret)."""
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


class IamS3:
    """Its own moto server with the given buckets, an `admin` IAM user, and IAM enforced from the start."""

    def __init__(self, log_path: Path, buckets: tuple[str, ...] = ()):
        self.server = MotoServer(log_path)
        self.endpoint = self.server.endpoint
        try:
            bootstrap = (MOTO_ACCESS_KEY, MOTO_SECRET_KEY)  # accepted until enforcement starts
            for bucket in buckets:
                client("s3", self.endpoint, bootstrap).create_bucket(Bucket=bucket)
            self.admin_keys = create_user(client("iam", self.endpoint, bootstrap), "admin", ADMIN_POLICY)
            enforce_iam(self.endpoint, True)
        except BaseException:
            self.server.stop()
            raise
        self.s3 = client("s3", self.endpoint, self.admin_keys)
        self.iam = client("iam", self.endpoint, self.admin_keys)

    def user(self, name: str, policy: dict) -> tuple[str, str]:
        return create_user(self.iam, name, policy)

    def client(self, keys: tuple[str, str], service: str = "s3"):
        return client(service, self.endpoint, keys)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def stop(self) -> None:
        self.server.stop()
