"""Database rows and model settings <-> protobuf messages."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from ourvidz.v1 import enhancer_service_pb2 as pb
from services.enhancer import domain, models


def timestamp(value) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def settings_proto(s: models.Sampling) -> pb.GenerationSettings:
    return pb.GenerationSettings(
        temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=s.seed
    )


def override(s: pb.GenerationSettings) -> domain.SettingsOverride:
    return domain.SettingsOverride(
        temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=s.seed
    )


def template_fields(t: pb.PromptTemplate) -> domain.TemplateFields:
    return domain.TemplateFields(
        name=t.name,
        target_model=t.target_model,
        system_prompt=t.system_prompt,
        user_template=t.user_template,
        description=t.description,
        settings=override(t.settings),
    )


def template_proto(row: dict) -> pb.PromptTemplate:
    return pb.PromptTemplate(
        id=str(row["id"]),
        name=row["name"],
        target_model=row["target_model"],
        version=row["version"],
        system_prompt=row["system_prompt"],
        user_template=row["user_template"],
        active=row["active"],
        create_time=timestamp(row["created_at"]),
        settings=pb.GenerationSettings(
            temperature=row["temperature"],
            top_p=row["top_p"],
            max_new_tokens=row["max_new_tokens"],
        ),
        created_by=row["created_by"],
        description=row["description"],
    )


def result_columns(r: pb.EnhancePromptResponse) -> dict:
    """The analytics columns an enhancement and a template test share: the
    result, its template version, model, tokens, latency, fallback, settings."""
    s = r.settings
    return {
        "template_id": r.template_id or None,
        "template_version": r.template_version,
        "enhanced_prompt": r.enhanced_prompt,
        "model": r.model,
        "target_model": r.target_model,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "target_tokens": r.target_tokens,
        "latency_seconds": r.latency_seconds,
        "fallback": r.fallback,
        "fallback_reason": r.fallback_reason,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_new_tokens": s.max_new_tokens,
        "seed": s.seed,
    }


def enhancement_row(
    prompt: str, r: pb.EnhancePromptResponse, user_id: str, job_id: str | None
) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "job_id": job_id,
        "user_id": user_id,
        "original_prompt": prompt,
        **result_columns(r),
    }


def test_row(prompt: str, r: pb.EnhancePromptResponse, admin_id: str) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "sample_prompt": prompt,
        "created_by": admin_id,
        **result_columns(r),
    }


def test_proto(row: dict) -> pb.PromptTest:
    return pb.PromptTest(
        id=str(row["id"]),
        template_id=str(row["template_id"]),
        template_version=row["template_version"],
        sample_prompt=row["sample_prompt"],
        create_time=timestamp(row["created_at"]),
        result=pb.EnhancePromptResponse(
            enhanced_prompt=row["enhanced_prompt"],
            template_id=str(row["template_id"]),
            template_version=row["template_version"],
            model=row["model"],
            tokens_in=row["tokens_in"],
            tokens_out=row["tokens_out"],
            latency_seconds=row["latency_seconds"],
            settings=pb.GenerationSettings(
                temperature=row["temperature"],
                top_p=row["top_p"],
                max_new_tokens=row["max_new_tokens"],
                seed=row["seed"],
            ),
            fallback=row["fallback"],
            fallback_reason=row["fallback_reason"],
            target_model=row["target_model"],
            target_tokens=row["target_tokens"],
        ),
    )
