"""The enhancer's service layer: enhancements (preview and job stage), the
template versions and their tests, analytics and ratings, and the chat
playground. Owns transactions and the model calls; knows nothing of gRPC
beyond the protobuf messages it returns."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import psycopg

from ourvidz.db import Database
from ourvidz.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from ourvidz.policy import PromptPolicy
from ourvidz.v1 import enhancer_service_pb2 as pb
from services.enhancer import convert, domain, models, store
from services.enhancer.settings import EnhancerSettings
from services.enhancer.templates import ChangeNotifier, TemplateCache

log = logging.getLogger(__name__)

# Fallback reasons recorded on enhancements and jobs.
REASON_TIMEOUT = "timeout"
REASON_ERROR = "model_error"
REASON_POLICY = "policy"
REASON_EMPTY = "empty_output"
REASON_NO_TEMPLATE = "no_active_template"
REASON_NOT_READY = "model_not_ready"


@dataclass(frozen=True)
class Caller:
    """Who an enhancement is for: the user it is recorded under, the database
    role of the transaction, and the job (None for a preview)."""

    user_id: str
    role: str = "user"
    job_id: str | None = None


class TokenCounter:
    """Counts a prompt's tokens the way its target's text encoder sees them:
    CLIP (start and end tokens included) for SDXL; the enhancer's own tokenizer
    for WAN, whose UMT5 tokenizer is not at hand."""

    def __init__(self, clip_folder: str = "") -> None:
        if clip_folder:
            from transformers import CLIPTokenizer

            self.clip = CLIPTokenizer.from_pretrained(clip_folder, local_files_only=True)
        else:
            from ourvidz import tokenizers

            self.clip = tokenizers.clip_tokenizer()
        self._lock = threading.Lock()

    def clip_tokens(self, text: str) -> int:
        with self._lock:
            return len(self.clip(text, truncation=False, verbose=False)["input_ids"])

    def count(self, lm: models.LoadedModel | None, target_model: str, text: str) -> int:
        if target_model == "sdxl":
            return self.clip_tokens(text)
        if lm is None:
            return 0
        return models.count_tokens(lm, text)


class EnhancerCore:
    def __init__(
        self,
        settings: EnhancerSettings,
        database: Database,
        model: Callable[[], models.LoadedModel | None],
        cache: TemplateCache,
        notifier: ChangeNotifier,
        policy: PromptPolicy,
        counter: TokenCounter,
    ) -> None:
        self.settings = settings
        self.db = database
        self._model = model
        self.cache = cache
        self.notifier = notifier
        self.policy = policy
        self.counter = counter
        self.limits = settings.limits()
        # The model call; tests replace it to make the model fail.
        self.generate = models.generate

    # --- enhancement -------------------------------------------------------------------------

    def sampling(self, target: str, template: dict | None, o: domain.SettingsOverride):
        s = self.settings
        t = template or {}
        return models.Sampling(
            temperature=o.temperature or t.get("temperature") or s.enhancer_temperature,
            top_p=o.top_p or t.get("top_p") or s.enhancer_top_p,
            max_new_tokens=o.max_new_tokens or t.get("max_new_tokens") or s.max_new_tokens(target),
            seed=o.seed or secrets.randbelow(domain.SEED_MAX) + 1,
            min_new_tokens=s.enhancer_min_new_tokens,
        )

    async def preview(
        self, user_id: str, prompt: str, target_model: str, job_type: str, o
    ) -> pb.EnhancePromptResponse:
        """EnhancePrompt: a user's preview, checked like a submission."""
        target = domain.resolve_target(target_model, job_type)
        text = domain.check_prompt(prompt, self.limits.max_prompt_chars)
        self.policy.check(text, "prompt")
        domain.check_settings(o)
        if self._model() is None:
            raise Unavailable("the enhancer model is still loading")
        return await self.enhance(text, target, o, Caller(user_id=user_id))

    async def enhance(
        self,
        prompt: str,
        target: str,
        o: domain.SettingsOverride = domain.SettingsOverride(),
        caller: Caller | None = None,
        *,
        template: dict | None = None,
        record: bool = True,
    ) -> pb.EnhancePromptResponse:
        """Enhance `prompt` for `target`; never raises for a model problem:
        an error, a timeout, an empty or policy-breaking output gives the
        original prompt back with `fallback` and a reason. Recorded in the
        analytics when `record`."""
        started = time.monotonic()
        if template is None:
            template = await self.cache.active(target)
        sampling = self.sampling(target, template, o)
        lm = self._model()
        result = pb.EnhancePromptResponse(
            target_model=target,
            model=lm.name if lm is not None else self.settings.enhancer_model,
            template_id=str(template["id"]) if template else "",
            template_version=template["version"] if template else 0,
            settings=convert.settings_proto(sampling),
        )
        reason, text = await self._generate(lm, prompt, target, template, sampling, result)
        if reason:
            result.fallback = True
            result.fallback_reason = reason
            result.enhanced_prompt = prompt
            result.target_tokens = await asyncio.to_thread(self.counter.count, lm, target, prompt)
        else:
            result.enhanced_prompt = text
        result.latency_seconds = time.monotonic() - started
        if caller is not None and record:
            result.enhancement_id = await self._record(prompt, result, caller)
        return result

    async def _generate(self, lm, prompt, target, template, sampling, result) -> tuple[str, str]:
        """(fallback reason, "") or ("", the fitted enhanced prompt); fills
        the token counts of `result`."""
        if lm is None:
            return REASON_NOT_READY, ""
        if template is None:
            return REASON_NO_TEMPLATE, ""
        messages = [
            {"role": "system", "content": template["system_prompt"]},
            {"role": "user", "content": domain.render_user_turn(template["user_template"], prompt)},
        ]
        timeout = self.settings.enhancer_timeout_seconds
        try:
            out = await asyncio.to_thread(
                self.generate, lm, messages, sampling, timeout_seconds=timeout
            )
        except models.GenerationTimeout:
            log.warning("enhancement timed out after %.1fs", timeout)
            return f"{REASON_TIMEOUT}: no answer within {timeout:g}s", ""
        except Exception as exc:
            log.error("enhancement failed", exc_info=exc)
            return f"{REASON_ERROR}: the model failed", ""
        result.tokens_in = out.tokens_in
        result.tokens_out = out.tokens_out
        text, tokens = await asyncio.to_thread(self._finish, lm, target, out.text)
        if not text:
            return f"{REASON_EMPTY}: the model wrote no prompt", ""
        if not self.policy.allows(text):
            return f"{REASON_POLICY}: the enhanced prompt broke the prompt policy", ""
        result.target_tokens = tokens
        return "", text

    def _finish(self, lm, target: str, raw: str) -> tuple[str, int]:
        """Clean the model's text; for SDXL fit it into CLIP's window."""
        text = domain.clean_output(raw)
        if text and target == "sdxl":
            text = domain.fit_tokens(text, self.counter.clip_tokens)
        return text, (self.counter.count(lm, target, text) if text else 0)

    async def _record(self, prompt: str, r: pb.EnhancePromptResponse, caller: Caller) -> str:
        row = convert.enhancement_row(prompt, r, caller.user_id, caller.job_id)
        async with self.db.tx(user_id=caller.user_id, role=caller.role) as conn:
            return await store.record_enhancement(conn, row)

    # --- templates ----------------------------------------------------------------------------

    async def list_templates(self, admin_id: str, target: str, active_only: bool) -> list[dict]:
        if target:
            domain.check_target(target)
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            return await store.list_templates(conn, target, active_only)

    async def get_template(self, admin_id: str, template_id: str) -> dict:
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            return await self._template(conn, template_id)

    async def _template(self, conn, template_id: str) -> dict:
        row = await store.get_template(conn, domain.parse_uuid(template_id, "template"))
        if row is None:
            raise NotFound("template not found")
        return row

    def _row(self, t: domain.TemplateFields, version: int, admin: str) -> dict:
        s = t.settings
        return {
            "id": str(uuid.uuid4()),
            "name": t.name.strip(),
            "target_model": t.target_model,
            "version": version,
            "system_prompt": t.system_prompt,
            "user_template": t.user_template,
            "temperature": s.temperature or self.settings.enhancer_temperature,
            "top_p": s.top_p or self.settings.enhancer_top_p,
            "max_new_tokens": s.max_new_tokens or self.settings.max_new_tokens(t.target_model),
            "description": t.description,
            "created_by": admin,
        }

    async def create_template(
        self, admin_id: str, fields: domain.TemplateFields, activate: bool
    ) -> dict:
        if not fields.user_template:
            fields = _replace(fields, user_template=domain.PROMPT_PLACEHOLDER)
        bad = domain.template_violations(fields, new=True)
        if bad:
            raise InvalidArgument(bad)
        try:
            async with self.db.tx(user_id=admin_id, role="admin") as conn:
                await store.lock_name(conn, fields.name.strip().lower())
                if await store.name_exists(conn, fields.name.strip()):
                    raise AlreadyExists(f"a template named {fields.name.strip()!r} exists")
                row = await store.insert_template(conn, self._row(fields, 1, admin_id))
                if activate:
                    await store.lock_target(conn, row["target_model"])
                    row = await store.activate(conn, str(row["id"]), row["target_model"])
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(f"a template named {fields.name.strip()!r} exists") from exc
        await self.notifier.publish(row["target_model"])
        return row

    async def update_template(
        self, admin_id: str, template_id: str, fields: domain.TemplateFields, activate: bool
    ) -> dict:
        """A new version (latest + 1) of the template `template_id` is a version
        of; empty fields are copied from the latest version."""
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            some = await self._template(conn, template_id)
            await store.lock_name(conn, some["name"].lower())
            latest = await store.latest_version(conn, some["name"])
            s = fields.settings
            merged = domain.TemplateFields(
                name=latest["name"],
                target_model=latest["target_model"],
                system_prompt=fields.system_prompt or latest["system_prompt"],
                user_template=fields.user_template or latest["user_template"],
                description=fields.description or latest["description"],
                settings=domain.SettingsOverride(
                    temperature=s.temperature or latest["temperature"],
                    top_p=s.top_p or latest["top_p"],
                    max_new_tokens=s.max_new_tokens or latest["max_new_tokens"],
                ),
            )
            bad = domain.template_violations(merged, new=False)
            if bad:
                raise InvalidArgument(bad)
            row = await store.insert_template(
                conn, self._row(merged, latest["version"] + 1, admin_id)
            )
            if activate:
                await store.lock_target(conn, row["target_model"])
                row = await store.activate(conn, str(row["id"]), row["target_model"])
        await self.notifier.publish(row["target_model"])
        return row

    async def activate_template(self, admin_id: str, template_id: str) -> dict:
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            row = await self._template(conn, template_id)
            await store.lock_target(conn, row["target_model"])
            row = await store.activate(conn, str(row["id"]), row["target_model"])
        await self.notifier.publish(row["target_model"])
        return row

    async def test_template(
        self, admin_id: str, template_id: str, samples: list[str], o: domain.SettingsOverride
    ) -> tuple[list[pb.EnhancePromptResponse], list[dict]]:
        """Run a template version over sample prompts; store and return the results."""
        domain.check_settings(o)
        if len(samples) > domain.MAX_SAMPLE_PROMPTS:
            raise InvalidArgument.field(
                "sample_prompts", f"at most {domain.MAX_SAMPLE_PROMPTS} prompts"
            )
        prompts = []
        for i, sample in enumerate(samples):
            field = f"sample_prompts[{i}]"
            text = domain.check_prompt(sample, self.limits.max_prompt_chars, field)
            self.policy.check(text, field)
            prompts.append(text)
        prompts = prompts or list(domain.SAMPLE_PROMPTS)
        template = await self.get_template(admin_id, template_id)
        if self._model() is None:
            raise Unavailable("the enhancer model is still loading")
        results = []
        for prompt in prompts:
            results.append(
                await self.enhance(prompt, template["target_model"], o, template=template)
            )
        rows = []
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            for prompt, r in zip(prompts, results, strict=True):
                rows.append(await store.insert_test(conn, convert.test_row(prompt, r, admin_id)))
        return results, rows

    async def list_tests(self, admin_id: str, template_id: str, page_size: int) -> list[dict]:
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        limit = min(page_size or 50, 500)
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            tid = str((await self._template(conn, template_id))["id"]) if template_id else None
            return await store.list_tests(conn, tid, limit)

    async def stats(self, admin_id: str, template_id: str) -> tuple[dict, dict]:
        async with self.db.tx(user_id=admin_id, role="admin") as conn:
            template = await self._template(conn, template_id)
            return template, await store.template_stats(conn, str(template["id"]))

    # --- ratings ------------------------------------------------------------------------------

    async def rate(self, user_id: str, job_id: str, rating: int) -> dict:
        if not 1 <= rating <= 5:
            raise InvalidArgument.field("rating", "must be between 1 and 5")
        job = domain.parse_uuid(job_id, "enhanced job")
        async with self.db.tx(user_id=user_id, role="user") as conn:
            if await store.enhancement_of_job(conn, job, user_id) is None:
                raise NotFound("enhanced job not found")
            return await store.upsert_rating(conn, user_id, job, rating)

    # --- chat ---------------------------------------------------------------------------------

    async def chat(
        self, messages: list[tuple[str, str]], o: domain.SettingsOverride
    ) -> AsyncIterator[str | tuple[models.Generated, models.Sampling, str]]:
        """Text deltas, then (the whole answer, the settings used, the model)."""
        s = self.settings
        chat = domain.check_chat(messages, s.enhancer_chat_max_messages, s.enhancer_chat_max_chars)
        for i, message in enumerate(chat):
            if message["role"] == "user":
                self.policy.check(message["content"], f"messages[{i}].content")
        domain.check_settings(o)
        lm = self._model()
        if lm is None:
            raise Unavailable("the enhancer model is still loading")
        sampling = models.Sampling(
            temperature=o.temperature or s.enhancer_temperature,
            top_p=o.top_p or s.enhancer_top_p,
            max_new_tokens=o.max_new_tokens or s.enhancer_chat_max_new_tokens,
            seed=o.seed or secrets.randbelow(domain.SEED_MAX) + 1,
        )
        async for item in _bridge(lm, chat, sampling, s.enhancer_chat_timeout_seconds):
            if isinstance(item, models.Generated):
                yield item, sampling, lm.name
            else:
                yield item


async def _bridge(lm, messages, sampling, limit_seconds: float) -> AsyncIterator:
    """`models.stream` (a blocking iterator) run in a thread, its items handed
    to the event loop; leaving early cancels the generation at its next token."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(kind: str, item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
        except RuntimeError:  # the loop is gone
            cancel.set()

    def pump() -> None:
        try:
            for item in models.stream(
                lm, messages, sampling, cancel, timeout_seconds=limit_seconds
            ):
                put("item", item)
        except BaseException as exc:
            put("error", exc)
        else:
            put("end", None)

    worker = asyncio.ensure_future(asyncio.to_thread(pump))
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                if isinstance(item, models.GenerationTimeout):
                    raise Unavailable("the model did not finish in time") from item
                raise item
            yield item
    finally:
        cancel.set()
        await asyncio.shield(worker)


def _replace(fields: domain.TemplateFields, **changes) -> domain.TemplateFields:
    from dataclasses import replace

    return replace(fields, **changes)
