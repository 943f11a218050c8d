"""Tokens, the error mapping and the catalog rules every service relies on."""

import grpc
import pytest
from google.rpc import error_details_pb2

from ourvidz import catalog
from ourvidz.auth import TokenSource
from ourvidz.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    status_from_exception,
)
from tests.conftest import GATEWAY_SIGNER, VERIFIER, WORKER_SIGNER


def test_token_roundtrip_and_refusals():
    token = GATEWAY_SIGNER.mint("user-1", "user", 60, email="a@b.c")
    principal = VERIFIER.verify(token)
    assert (principal.subject, principal.role, principal.email) == ("user-1", "user", "a@b.c")
    assert principal.user_id == "user-1"
    with pytest.raises(Unauthenticated, match="expired"):
        VERIFIER.verify(GATEWAY_SIGNER.mint("user-1", "user", -5))
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(Unauthenticated):  # a refresh-kind token is not an access token
        VERIFIER.verify(GATEWAY_SIGNER.mint("user-1", "user", 60, kind="refresh"))


def test_worker_token_source_has_no_user_identity():
    source = TokenSource(WORKER_SIGNER, "sdxl-1", role="worker")
    principal = VERIFIER.verify(source.token())
    assert principal.role == "worker" and principal.user_id == ""
    assert source.token() == source.token()  # cached until close to expiry


def test_errors_map_to_codes_with_details():
    status = status_from_exception(
        InvalidArgument(
            [FieldViolation("num_images", "must be 1, 3 or 6"), FieldViolation("seed", "too big")]
        )
    )
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert [v.field for v in bad.field_violations] == ["num_images", "seed"]
    assert (
        status_from_exception(NotFound("job not found")).code == grpc.StatusCode.NOT_FOUND.value[0]
    )
    assert (
        status_from_exception(ResourceExhausted("too many")).code
        == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    )
    internal = status_from_exception(RuntimeError("password=hunter2 at line 3"))
    assert internal.code == grpc.StatusCode.INTERNAL.value[0]
    assert "hunter2" not in internal.message


def test_catalog_shapes():
    assert len(catalog.CATALOG) == 10
    fast = catalog.CATALOG["sdxl_image_fast"]
    assert (fast.steps, fast.guidance_scale, fast.default_width, fast.num_images) == (
        15,
        6.0,
        1024,
        (1, 3, 6),
    )
    assert fast.subject == "tasks.sdxl.fast" and fast.bucket == "sdxl-image-fast"
    video = catalog.CATALOG["video_fast"]
    assert video.default_num_frames == 81 and (video.default_num_frames - 1) % 4 == 0
    # Said as a user reads it: no internal history in what clients show.
    assert "5 s video" in video.notes and "old system" not in video.notes
    assert catalog.CATALOG["video7b_high_enhanced"].enhanced
    assert "thumbnails" in catalog.ALL_BUCKETS and "reference-images" in catalog.ALL_BUCKETS


def test_negative_prompt_adds_terms_for_several_people():
    single = catalog.sdxl_negative_prompt("a portrait of an old fisherman")
    group = catalog.sdxl_negative_prompt("two women dancing in the rain")
    assert single == catalog.SDXL_BASE_NEGATIVE
    assert group.startswith(single) and "merged bodies" in group
    assert "merged bodies" in catalog.sdxl_negative_prompt("a crowd at a concert")


@pytest.mark.parametrize("kind", ["style", "composition", "character"])
def test_reference_strength_lowers_denoising(kind):
    weak, _ = catalog.reference_settings(kind, 0.1)
    strong, _ = catalog.reference_settings(kind, 1.0)
    assert 0 < strong < weak <= 1
