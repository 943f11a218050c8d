-- The enhancer schema: prompt templates (versioned, one active per target
-- model), template test runs, analytics of every enhancement, and users'
-- ratings of what enhanced jobs produced.
-- depends: common_0001_caller

CREATE SCHEMA IF NOT EXISTS enhancer;

CREATE TABLE enhancer.prompt_templates (
    id             uuid PRIMARY KEY,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    target_model   text NOT NULL CHECK (target_model IN ('sdxl', 'wan')),
    version        integer NOT NULL CHECK (version >= 1),
    system_prompt  text NOT NULL,
    user_template  text NOT NULL CHECK (position('{prompt}' IN user_template) > 0),
    temperature    real NOT NULL CHECK (temperature >= 0 AND temperature <= 2),
    top_p          real NOT NULL CHECK (top_p > 0 AND top_p <= 1),
    max_new_tokens integer NOT NULL CHECK (max_new_tokens BETWEEN 1 AND 1024),
    description    text NOT NULL DEFAULT '',
    created_by     text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    active         boolean NOT NULL DEFAULT false,
    UNIQUE (name, version)
);

-- At most one active version per target model.
CREATE UNIQUE INDEX prompt_templates_one_active ON enhancer.prompt_templates (target_model)
    WHERE active;

CREATE TABLE enhancer.prompt_tests (
    id               uuid PRIMARY KEY,
    template_id      uuid NOT NULL REFERENCES enhancer.prompt_templates (id),
    template_version integer NOT NULL,
    sample_prompt    text NOT NULL,
    enhanced_prompt  text NOT NULL,
    model            text NOT NULL,
    target_model     text NOT NULL,
    tokens_in        integer NOT NULL,
    tokens_out       integer NOT NULL,
    target_tokens    integer NOT NULL,
    latency_seconds  double precision NOT NULL,
    fallback         boolean NOT NULL,
    fallback_reason  text NOT NULL DEFAULT '',
    temperature      real NOT NULL,
    top_p            real NOT NULL,
    max_new_tokens   integer NOT NULL,
    seed             bigint NOT NULL,
    created_by       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX prompt_tests_template ON enhancer.prompt_tests (template_id, created_at DESC);

CREATE TABLE enhancer.enhancements (
    id               uuid PRIMARY KEY,
    job_id           uuid,  -- NULL for a preview (EnhancePrompt)
    user_id          uuid NOT NULL,
    template_id      uuid REFERENCES enhancer.prompt_templates (id),
    template_version integer NOT NULL DEFAULT 0,
    model            text NOT NULL,
    target_model     text NOT NULL CHECK (target_model IN ('sdxl', 'wan')),
    tokens_in        integer NOT NULL DEFAULT 0,
    tokens_out       integer NOT NULL DEFAULT 0,
    target_tokens    integer NOT NULL DEFAULT 0,
    latency_seconds  double precision NOT NULL DEFAULT 0,
    fallback         boolean NOT NULL DEFAULT false,
    fallback_reason  text NOT NULL DEFAULT '',
    temperature      real NOT NULL,
    top_p            real NOT NULL,
    max_new_tokens   integer NOT NULL,
    seed             bigint NOT NULL,
    original_prompt  text NOT NULL,
    enhanced_prompt  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per enhanced job: a redelivered enhance task replaces its row.
CREATE UNIQUE INDEX enhancements_job ON enhancer.enhancements (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX enhancements_template ON enhancer.enhancements (template_id);
CREATE INDEX enhancements_user ON enhancer.enhancements (user_id, created_at DESC);

CREATE TABLE enhancer.enhancement_ratings (
    user_id    uuid NOT NULL,
    job_id     uuid NOT NULL,
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, job_id)
);

CREATE INDEX enhancement_ratings_job ON enhancer.enhancement_ratings (job_id);

-- Row level security. Templates are not user-owned: anyone's transaction may
-- read them (an enhancement reads the active one); only trusted callers (admins,
-- the service itself) write them. Tests are admin-only. A user sees only their
-- own enhancements and ratings; admins, workers and the service see all.
ALTER TABLE enhancer.prompt_templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE enhancer.prompt_tests ENABLE ROW LEVEL SECURITY;
ALTER TABLE enhancer.enhancements ENABLE ROW LEVEL SECURITY;
ALTER TABLE enhancer.enhancement_ratings ENABLE ROW LEVEL SECURITY;

CREATE POLICY templates_read ON enhancer.prompt_templates FOR SELECT USING (true);
CREATE POLICY templates_insert ON enhancer.prompt_templates FOR INSERT
    WITH CHECK (public.app_is_trusted());
CREATE POLICY templates_update ON enhancer.prompt_templates FOR UPDATE
    USING (public.app_is_trusted()) WITH CHECK (public.app_is_trusted());
CREATE POLICY prompt_tests_trusted ON enhancer.prompt_tests
    USING (public.app_is_trusted()) WITH CHECK (public.app_is_trusted());
CREATE POLICY enhancements_owner ON enhancer.enhancements
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (public.app_is_trusted() OR user_id = public.app_user_id());
CREATE POLICY enhancement_ratings_owner ON enhancer.enhancement_ratings
    USING (public.app_is_trusted() OR user_id = public.app_user_id())
    WITH CHECK (public.app_is_trusted() OR user_id = public.app_user_id());

GRANT USAGE ON SCHEMA enhancer TO ourvidz_enhancer;
GRANT SELECT, INSERT, UPDATE ON enhancer.prompt_templates TO ourvidz_enhancer;
GRANT SELECT, INSERT ON enhancer.prompt_tests TO ourvidz_enhancer;
GRANT SELECT, INSERT, UPDATE ON enhancer.enhancements TO ourvidz_enhancer;
GRANT SELECT, INSERT, UPDATE ON enhancer.enhancement_ratings TO ourvidz_enhancer;

-- The default templates, one active per target model.
INSERT INTO enhancer.prompt_templates
    (id, name, target_model, version, system_prompt, user_template, temperature, top_p,
     max_new_tokens, description, created_by, active)
VALUES
(
    'a7d3c1e0-5b1f-4c39-9a51-0d2f6c0e5d01', 'sdxl-default', 'sdxl', 1,
    'You rewrite image prompts for Stable Diffusion XL. Answer with the prompt only: '
    'a single line of compact, comma-separated visual descriptors, most important first '
    '(subject, its key attributes, setting, composition, lighting, colour palette, '
    'medium or style, quality terms). No sentences, no verbs where a noun phrase does, '
    'no explanations, no quotes, no labels, no negative terms. Keep it under 60 words: '
    'it must fit the 77-token window of the CLIP text encoder, so anything past it is lost. '
    'Keep every element the user asked for and never add people, text or nudity they did '
    'not ask for.',
    'Rewrite this as an SDXL prompt: {prompt}',
    0.7, 0.9, 80,
    'Compact comma-separated descriptors sized for CLIP''s 77 tokens.',
    'system', true
),
(
    'b4e8f2a1-6c2a-4d4a-8b62-1e3f7d1f6e02', 'wan-default', 'wan', 1,
    'You rewrite prompts for WAN 2.1, a text-to-video model. Answer with the prompt only: '
    'one rich, descriptive paragraph of 80 to 150 words in plain English. Describe the '
    'subject and its appearance, what moves and how (the action from start to end), the '
    'camera (shot size, angle and movement such as a slow dolly-in, pan or tracking shot), '
    'the setting and background, the lighting and time of day, the mood, and the visual '
    'style. Use concrete, visual language in the present tense. No lists, no headings, no '
    'quotes, no explanations. Keep every element the user asked for and never add people, '
    'text or nudity they did not ask for.',
    'Rewrite this as a WAN video prompt: {prompt}',
    0.7, 0.9, 200,
    'One paragraph: subject, motion, camera, lighting, style.',
    'system', true
);
