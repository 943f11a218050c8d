"""Credentials at the Jobs service: only the gateway's key makes user tokens,
only a worker's key makes worker tokens, and nothing but EdDSA under a known
key id is accepted."""

from __future__ import annotations

import time
import uuid

import grpc
import jwt
import pytest

from ourvidz import keys
from ourvidz.auth import ISSUER
from ourvidz.v1 import job_service_pb2 as pb
from tests.conftest import GATEWAY_KEY, GATEWAY_SIGNER, WORKER_KEY, WORKER_SIGNER, rpc_error


def _md(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def _forged(key, kid: str, role: str, alg: str = "EdDSA") -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": str(uuid.uuid4()), "role": role, "typ": "access",
              "iat": now, "exp": now + 300}  # fmt: skip
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


async def test_genuine_user_and_worker_tokens_are_accepted(harness):
    _, user_md = harness.user()
    for md in (user_md, harness.worker_md):
        response = await harness.stub.ListJobTypes(pb.ListJobTypesRequest(), metadata=md)
        assert response.job_types


@pytest.mark.parametrize("role", ["admin", "user"])
async def test_a_worker_key_cannot_act_as_a_user_or_admin(harness, role):
    token = _forged(WORKER_KEY, WORKER_SIGNER.kid, role)
    for call in (
        harness.stub.ListJobs(pb.ListJobsRequest(), metadata=_md(token)),
        harness.stub.ListJobTypes(pb.ListJobTypesRequest(), metadata=_md(token)),
    ):
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_gateway_key_cannot_act_as_a_worker(harness):
    _, md = harness.user()
    job = await harness.create(md)
    token = _forged(GATEWAY_KEY, GATEWAY_SIGNER.kid, "worker")
    err = await rpc_error(
        harness.stub.StartJob(
            pb.StartJobRequest(job_id=job.id, worker_id="w", delivery=1), metadata=_md(token)
        )
    )
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)).job
    assert got.attempt == 0 and got.state == job.state  # nothing changed


@pytest.mark.parametrize("kind", ["hs256", "none", "unknown kid"])
async def test_foreign_algorithms_and_keys_are_refused(harness, kind):
    if kind == "hs256":
        token = _forged("test-secret-0123456789-0123456789-abcdef", GATEWAY_SIGNER.kid,
                        "admin", alg="HS256")  # fmt: skip
    elif kind == "none":
        token = _forged(None, GATEWAY_SIGNER.kid, "admin", alg="none")
    else:
        stranger = keys.generate_private_key()
        token = _forged(stranger, keys.public_jwk(stranger)["kid"], "user")
    err = await rpc_error(harness.stub.ListJobs(pb.ListJobsRequest(), metadata=_md(token)))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
