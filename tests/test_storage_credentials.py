"""Credentials of the storage connection, read through the amazon provider's AwsConnectionWrapper: temporary
keys with a session token (from MinIO's own STS), a profile of the AWS shared files, the AWS default chain, an
assumed role, a clear error when there are none, and the ``e2e3d_s3`` type whose Test button works on MinIO."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import obstore
import obstore.exceptions
import pytest
import urllib3

from e2e3d_provider.devstack import stack
from e2e3d_provider.exceptions import StorageAuthError
from e2e3d_provider.hooks.storage import S3CompatibleStorageHook, StorageHook

#: environment variables through which the AWS default chain could find credentials on this machine
AWS_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The AWS default chain finds nothing on its own: no AWS_* keys, shared files that do not exist, and no
    instance metadata (so it does not wait on 169.254.169.254)."""
    for name in AWS_CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def define(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn: dict[str, Any]) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def endpoint_extra(info: stack.StackInfo) -> dict[str, Any]:
    """The stack connection's extras without its keys: endpoint, region, the CA when TLS."""
    return dict(info.minio_conn()["extra"])


def round_trip(hook: StorageHook, bucket: str, tmp_path: Path) -> None:
    """Everything a connection's credentials sign, each path once: an upload and a download through obstore
    (the data path), a small object and a listing through minio-py (the control plane), a pre-signed GET
    fetched with no credentials, and a create-only PUT grant (signed by core.presign) used once."""
    source = tmp_path / "src"
    (source / "d").mkdir(parents=True)
    (source / "d" / "a.bin").write_bytes(os.urandom(4096))
    uploaded = hook.upload_dir(source, bucket, "up")
    assert uploaded.files == 1, uploaded
    downloaded = hook.download_prefix(bucket, "up", tmp_path / "dst")
    assert (
        downloaded.files == 1
        and (tmp_path / "dst" / "d" / "a.bin").read_bytes() == (source / "d" / "a.bin").read_bytes()
    )
    hook.put_bytes(bucket, "small.txt", b"hello")
    assert hook.get_bytes(bucket, "small.txt") == b"hello"
    assert hook.list_keys(bucket) == ["small.txt", "up/d/a.bin"]
    url = hook.presigned_get(bucket, "small.txt", expires=60)
    got = urllib3.request("GET", url, retries=False)
    assert got.status == 200 and got.data == b"hello", (got.status, got.data[:300])
    grant, headers = hook.create_only_grant(bucket, "granted.bin", 3, expires=60)
    put = urllib3.request("PUT", grant, body=b"abc", headers=headers, retries=False)
    assert put.status == 200, (put.status, put.data[:300])
    assert hook.get_bytes(bucket, "granted.bin") == b"abc"


# ---------------------------------------------------------------------------------------------------------
# Temporary keys with a session token (MinIO's STS)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.servers("minio")
def test_minio_sts_session_token_signs_every_path_and_without_it_the_keys_are_refused(
    stack_info: stack.StackInfo, storage: StorageHook, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Temporary keys from MinIO's STS (AssumeRole with the root user's keys) in an ``aws`` connection with
    extra ``aws_session_token``: uploads, downloads, listings and pre-signed URLs all work and carry the token.
    The control: the same keys without the token are refused with the hook's auth error, on both clients."""
    from minio.credentials.providers import AssumeRoleProvider

    temporary = AssumeRoleProvider(
        sts_endpoint=stack_info.s3_endpoint,
        access_key=stack_info.access_key,
        secret_key=stack_info.secret_key,
        duration_seconds=900,
    ).retrieve()
    assert temporary.session_token and temporary.access_key != stack_info.access_key
    keys = {"conn_type": "aws", "login": temporary.access_key, "password": temporary.secret_key}
    define(
        monkeypatch,
        "minio_sts",
        {**keys, "extra": {**endpoint_extra(stack_info), "aws_session_token": temporary.session_token}},
    )
    hook = StorageHook("minio_sts")
    assert hook.settings.credentials_method == "keys+token"
    round_trip(hook, bucket, tmp_path)
    assert "X-Amz-Security-Token=" in hook.presigned_get(bucket, "small.txt", expires=60)
    for shown in (repr(hook.settings), repr(hook.settings.credentials), repr(hook.minio_credentials)):
        assert temporary.secret_key not in shown and temporary.session_token not in shown, shown

    define(monkeypatch, "minio_sts_notoken", {**keys, "extra": endpoint_extra(stack_info)})
    control = StorageHook("minio_sts_notoken", attempts=1)
    with pytest.raises(StorageAuthError, match="credentials of connection 'minio_sts_notoken'") as listing:
        control.list_keys(bucket)
    with pytest.raises(StorageAuthError, match="minio_sts_notoken") as upload:
        control.upload_dir(tmp_path / "src", bucket, "control")
    # a token that is not the one issued (expired, mistyped): the server's InvalidTokenId, which obstore files as a
    # generic error; the hook still calls it an auth error (a HEAD's bare 403 would only say AccessDenied)
    define(
        monkeypatch, "minio_sts_badtoken", {**keys, "extra": {**endpoint_extra(stack_info), "aws_session_token": "x"}}
    )
    garbled = StorageHook("minio_sts_badtoken", attempts=1)
    with pytest.raises(obstore.exceptions.BaseError) as raw:
        obstore.list(garbled.store(bucket)).collect()
    upload_token = garbled.translate(raw.value, f"list {bucket}")
    assert isinstance(upload_token, StorageAuthError) and "InvalidTokenId" in str(upload_token), upload_token
    assert "credentials of connection 'minio_sts_badtoken'" in str(upload_token)
    for message in (str(listing.value), str(upload.value), str(upload_token)):
        assert temporary.secret_key not in message and temporary.session_token not in message


# ---------------------------------------------------------------------------------------------------------
# A profile, the default chain, an assumed role
# ---------------------------------------------------------------------------------------------------------


def test_a_profile_of_the_shared_credentials_file(
    stack_info: stack.StackInfo,
    storage: StorageHook,
    bucket: str,
    no_ambient_aws: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Extra ``profile_name`` and no keys in the connection: the keys come from the profile of the file
    AWS_SHARED_CREDENTIALS_FILE names; a profile that is not there is an auth error that names it."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[e2e3d]\naws_access_key_id = {stack_info.access_key}\naws_secret_access_key = {stack_info.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    define(
        monkeypatch,
        "minio_profile",
        {"conn_type": "aws", "extra": {**endpoint_extra(stack_info), "profile_name": "e2e3d"}},
    )
    hook = StorageHook("minio_profile")
    assert hook.settings.credentials_method == "profile" and hook.settings.access_key is None
    round_trip(hook, bucket, tmp_path)

    define(
        monkeypatch,
        "minio_noprofile",
        {"conn_type": "aws", "extra": {**endpoint_extra(stack_info), "profile_name": "absent"}},
    )
    with pytest.raises(StorageAuthError, match="connection 'minio_noprofile': profile 'absent'"):
        StorageHook("minio_noprofile").list_keys(bucket)


def test_the_aws_default_chain_when_the_connection_has_no_keys(
    stack_info: stack.StackInfo,
    storage: StorageHook,
    bucket: str,
    no_ambient_aws: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A connection with an endpoint and nothing else takes the keys of the AWS default chain (here the
    environment's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), as the amazon provider's hooks do."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack_info.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack_info.secret_key)
    define(monkeypatch, "minio_chain", {"conn_type": "aws", "extra": endpoint_extra(stack_info)})
    hook = StorageHook("minio_chain")
    assert hook.settings.credentials_method == "default-chain"
    round_trip(hook, bucket, tmp_path)
    assert hook.session_credentials.method == "env"
    ok, message = hook.test_connection()
    assert ok, message


@pytest.mark.servers("minio")
def test_role_arn_assumed_through_minio_sts(
    stack_info: stack.StackInfo,
    storage: StorageHook,
    bucket: str,
    no_ambient_aws: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Extra ``role_arn`` with the STS endpoint in ``service_config``: the amazon provider's session factory
    assumes the role (its keys from login/password) and the hook signs with the temporary keys it got, token
    included. MinIO's AssumeRole for a user takes the role ARN as given and returns that user's rights."""
    define(
        monkeypatch,
        "minio_role",
        {
            "conn_type": "aws",
            "login": stack_info.access_key,
            "password": stack_info.secret_key,
            "extra": {
                **endpoint_extra(stack_info),
                "role_arn": "arn:minio:iam:::role/e2e3d-test",
                "service_config": {"sts": {"endpoint_url": stack_info.s3_endpoint}},
            },
        },
    )
    hook = StorageHook("minio_role")
    assert hook.settings.credentials_method == "role"
    round_trip(hook, bucket, tmp_path)
    frozen = hook.session_credentials.get_frozen_credentials()
    assert frozen.token and frozen.access_key != stack_info.access_key, "the keys signed are the assumed ones"


def test_no_credentials_anywhere_is_a_clear_auth_error(no_ambient_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys in the connection, no profile, no role, and a default chain that finds nothing: the error
    names the connection and every place credentials could have come from; test_connection says the same."""
    define(monkeypatch, "minio_nocreds", {"conn_type": "aws", "extra": {"endpoint_url": "http://127.0.0.1:9"}})
    hook = StorageHook("minio_nocreds")
    with pytest.raises(StorageAuthError) as refused:
        hook.list_keys("input")
    message = str(refused.value)
    assert "'minio_nocreds' has no credentials" in message
    for source in ("login/password", "aws_session_token", "profile_name", "role_arn", "AWS default chain"):
        assert source in message, source
    ok, said = hook.test_connection()
    assert not ok and "has no credentials" in said


def test_keys_and_tokens_are_in_no_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings, the credentials read and the minio provider show where the credentials come from and
    never a secret key or a session token (the amazon wrapper's own repr shows them: it is kept out)."""
    secret, token = f"secret-{uuid.uuid4().hex}", f"token-{uuid.uuid4().hex}"
    define(
        monkeypatch,
        "minio_repr",
        {
            "conn_type": "aws",
            "login": "AKIAEXAMPLE",
            "password": secret,
            "extra": {"endpoint_url": "http://127.0.0.1:9", "aws_session_token": token},
        },
    )
    hook = StorageHook("minio_repr")
    shown = " ".join((repr(hook.settings), str(hook.settings), repr(hook.settings.credentials)))
    assert "keys+token" in shown
    assert secret not in shown and token not in shown, shown
    assert hook.signing_keys() == ("AKIAEXAMPLE", secret, token)


def test_static_keys_create_no_boto3_session(tmp_path: Path) -> None:
    """A connection with its keys (the usual MinIO/SeaweedFS one) builds both clients without importing
    boto3 or the amazon provider's session module: the publish and transfer paths pay nothing for the other
    credential sources. Run in a fresh interpreter, where nothing else has imported them."""
    conn = {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": "http://127.0.0.1:9"}}
    code = (
        "import sys\n"
        "from e2e3d_provider.hooks.storage import StorageHook\n"
        "hook = StorageHook('minio_static')\n"
        "hook.client, hook.store('bucket'), hook.presign_client, hook.signing_keys()\n"
        "assert hook.settings.credentials_method == 'keys' and hook.session_credentials is None\n"
        "loaded = sorted(m for m in ('boto3', 'airflow.providers.amazon.aws.hooks.base_aws') if m in sys.modules)\n"
        "print(','.join(loaded) or 'none')\n"
    )
    env = {**os.environ, "AIRFLOW_CONN_MINIO_STATIC": json.dumps(conn)}
    result = subprocess.run(  # not from the checkout: ``-c`` puts the working folder first on sys.path
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "none", result.stdout


# ---------------------------------------------------------------------------------------------------------
# The e2e3d_s3 connection type: the UI's Test button
# ---------------------------------------------------------------------------------------------------------


def test_the_e2e3d_s3_type_s_test_button_lists_the_buckets(
    stack_info: stack.StackInfo, storage: StorageHook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the UI's Test button runs (Airflow's ``POST /api/v2/connections/test``, with ``[core] test_connection``
    enabled): it builds a ``Connection`` from the form, exports it as a transient AIRFLOW_CONN_ variable in URI form
    (``get_uri()``) and calls ``test_connection()``, which builds the hook registered for the type. For ``e2e3d_s3``
    that is our hook, which lists the buckets, where the amazon hook of ``aws`` calls STS GetCallerIdentity."""
    from airflow.models.connection import Connection

    def test_button(conn_id: str, password: str) -> tuple[bool, str]:
        extra = stack_info.minio_conn()["extra"]
        form = Connection(
            conn_id=conn_id,
            conn_type="e2e3d_s3",
            login=stack_info.access_key,
            password=password,
            extra=json.dumps(extra),
        )
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", form.get_uri())  # as the API route does
        assert type(form.get_hook()) is S3CompatibleStorageHook
        return form.test_connection()

    ok, message = test_button("minio_ui", stack_info.secret_key)
    assert ok, message
    assert message.startswith(f"connected to {stack_info.s3_endpoint}; buckets: ") and "input" in message

    ok, message = test_button("minio_ui_bad", "wrong-secret")
    assert not ok and "rejected the credentials of connection 'minio_ui_bad'" in message, message


def test_the_e2e3d_s3_type_is_registered_with_its_form() -> None:
    """Airflow's providers manager maps ``e2e3d_s3`` to our hook and reads its form from the provider info
    (Airflow 3.2+); the hook's get_ui_field_behaviour (what Airflow 3.1 reads) says the same."""
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["e2e3d_s3"]  # what a task's Connection.get_hook() reads
    assert hook is not None and hook.hook_class_name == "e2e3d_provider.hooks.storage.S3CompatibleStorageHook"
    assert hook.connection_id_attribute_name == "minio_conn_id"
    behaviour = ProvidersManager().field_behaviours["e2e3d_s3"]  # what the UI's connection form reads
    declared = S3CompatibleStorageHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == declared["hidden_fields"]
    assert behaviour["relabeling"] == declared["relabeling"]
    # the manager prefixes the placeholders of extra fields; the standard ones keep their names
    assert behaviour["placeholders"] == declared["placeholders"]
    assert json.loads(declared["placeholders"]["extra"])["endpoint_url"]
