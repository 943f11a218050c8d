// The generation form: prompt, job type, the type's options (quantity, seed,
// size, frames, negative prompt), the reference image and the enhance preview.
// It knows nothing of jobs: `onSubmit(body)` gets the POST /v1/jobs body.
import { api } from "../api.js";
import { attempt, field, formatSeconds, h, showFieldErrors } from "../ui.js";
import { referencePicker } from "./reference.js";

const GROUPS = [
  ["image", "Images"],
  ["video", "Videos"],
];

/** "SDXL image · fast · ~5 s" — what a person needs to choose a type. */
export function typeLabel(t) {
  const parts = [`${t.worker.toUpperCase()} ${t.output}`, t.quality];
  if (t.enhanced) parts.push("enhanced");
  return `${parts.join(" · ")} (${formatSeconds(t.expected_seconds)})`;
}

function byQualityThenEnhanced(a, b) {
  const rank = (t) => (t.quality === "fast" ? 0 : 1) * 2 + (t.enhanced ? 1 : 0);
  return rank(a) - rank(b) || a.worker.localeCompare(b.worker);
}

/** A type that cannot run now stays selectable (its job waits in the queue);
 * its option says so in words, its reason in the hint under the picker. */
function typeSelect(types) {
  const select = h("select", { name: "job_type" });
  for (const [output, title] of GROUPS) {
    const group = h("optgroup", { label: title });
    for (const t of types.filter((x) => x.output === output).sort(byQualityThenEnhanced)) {
      const label = t.available === false ? `${typeLabel(t)} — not available now` : typeLabel(t);
      group.append(h("option", { value: t.name, title: t.unavailable_reason || "" }, label));
    }
    if (group.children.length) select.append(group);
  }
  // Start on a type that can run now, when there is one.
  const ready = types.filter((t) => t.available !== false).map((t) => t.name);
  const first = [...select.options].find((o) => ready.includes(o.value));
  if (first) select.value = first.value;
  return select;
}

function options(values, selected) {
  return values.map((v) => h("option", { value: String(v), selected: v === selected }, String(v)));
}

/** WAN needs 4k+1 frames: 5, 9, 13 ... up to the type's maximum. */
function frameChoices(t) {
  const out = [];
  for (let n = 5; n <= (t.max_num_frames || t.default_num_frames); n += 4) out.push(n);
  if (!out.includes(t.default_num_frames)) out.push(t.default_num_frames);
  return out.sort((a, b) => a - b);
}

function randomSeed() {
  const v = new Uint32Array(1);
  crypto.getRandomValues(v);
  return (v[0] % 2147483646) + 1;
}

/**
 * The form. With `storageKey`, its settings are kept in localStorage under
 * that key as they change and come back when the form is made again.
 */
export function createForm({ types, onSubmit, storageKey }) {
  const byName = Object.fromEntries(types.map((t) => [t.name, t]));
  const prompt = h("textarea", { name: "prompt", rows: 4, maxlength: 2000, placeholder: "A lighthouse on a cliff at dawn, oil painting" });
  const jobType = typeSelect(types);
  const typeHint = h("small", { class: "hint", id: "ws-type-hint" });
  jobType.setAttribute("aria-describedby", typeHint.id);
  const quantity = h("select", { name: "num_images" });
  const negative = h("textarea", { name: "negative_prompt", rows: 2, maxlength: 2000, placeholder: "Empty: the job type's default" });
  const lockSeed = h("input", { type: "checkbox", name: "lock_seed" });
  const seed = h("input", { type: "number", name: "seed", min: 1, step: 1, inputmode: "numeric", disabled: true });
  const width = h("select", { name: "width" });
  const height = h("select", { name: "height" });
  const frames = h("select", { name: "num_frames" });
  const reference = referencePicker();
  const generate = h("button", { type: "submit", class: "primary" }, "Generate");
  const enhanceButton = h("button", { type: "button" }, "Enhance prompt");
  const enhanced = h("section", { class: "ws-enhanced card", "aria-label": "Enhanced prompt", hidden: true });

  const fields = {
    quantity: field("Quantity", quantity),
    negative: field("Negative prompt", negative),
    seed: h("div", { class: "ws-seed" },
      h("label", { class: "ws-check" }, lockSeed, " Lock seed"),
      field("Seed", seed, "Random unless locked; every result shows its seed.")),
    size: h("div", { class: "ws-size" }, field("Width", width), field("Height", height)),
    frames: field("Frames", frames, "WAN video needs 4k+1 frames."),
  };

  lockSeed.addEventListener("change", () => {
    seed.disabled = !lockSeed.checked;
    if (lockSeed.checked && !seed.value) seed.value = String(randomSeed());
    if (lockSeed.checked) seed.focus();
  });

  /** Show the controls the chosen type takes, with its sizes and defaults;
   * `want` names values to choose where the type allows them. */
  function applyType(want = {}) {
    const t = byName[jobType.value];
    const unavailable = t.available === false && `Not available now: ${t.unavailable_reason}; a job waits in the queue until it is.`;
    typeHint.textContent = [unavailable, `Expected time ${formatSeconds(t.expected_seconds)}.`, t.notes].filter(Boolean).join(" ");
    typeHint.classList.toggle("warn", Boolean(unavailable));
    const multi = t.allowed_num_images.length > 1;
    fields.quantity.hidden = !multi;
    quantity.replaceChildren(...options(t.allowed_num_images, want.num_images || Number(quantity.value) || 1));
    fields.negative.hidden = t.worker !== "sdxl";
    fields.seed.hidden = false;
    const keepW = want.width || Number(width.value) || t.default_width;
    const keepH = want.height || Number(height.value) || t.default_height;
    width.replaceChildren(...options(t.allowed_widths, t.allowed_widths.includes(keepW) ? keepW : t.default_width));
    height.replaceChildren(...options(t.allowed_heights, t.allowed_heights.includes(keepH) ? keepH : t.default_height));
    fields.frames.hidden = t.output !== "video";
    if (t.output === "video") {
      const keep = want.num_frames || Number(frames.value) || t.default_num_frames;
      const choices = frameChoices(t);
      frames.replaceChildren(...options(choices, choices.includes(keep) ? keep : t.default_num_frames));
    }
    reference.el.hidden = !t.accepts_reference;
  }
  jobType.addEventListener("change", () => applyType());

  function body() {
    const t = byName[jobType.value];
    const out = { job_type: t.name, prompt: prompt.value.trim(), width: Number(width.value), height: Number(height.value) };
    if (t.allowed_num_images.length > 1) out.num_images = Number(quantity.value);
    if (t.worker === "sdxl" && negative.value.trim()) out.negative_prompt = negative.value.trim();
    if (lockSeed.checked && seed.value !== "") out.seed = Number(seed.value);
    if (t.output === "video") out.num_frames = Number(frames.value);
    if (t.accepts_reference) Object.assign(out, reference.value());
    return out;
  }

  async function enhance() {
    hideEnhanced();
    showFieldErrors(form, null);
    const result = await attempt(
      () => api.post("/v1/prompts/enhance", { prompt: prompt.value.trim(), job_type: jobType.value }),
      { busy: enhanceButton, form },
    );
    if (result) showEnhanced(result);
  }

  function showEnhanced(result) {
    const use = h("button", { type: "button", class: "primary" }, "Use it");
    const dismiss = h("button", { type: "button" }, "Dismiss");
    use.addEventListener("click", () => {
      prompt.value = result.enhanced_prompt;
      hideEnhanced();
      prompt.focus();
    });
    dismiss.addEventListener("click", () => {
      hideEnhanced();
      enhanceButton.focus();
    });
    const note = result.fallback
      ? h("p", { class: "ws-fallback", role: "alert" },
          `The enhancer could not improve this prompt (${readableReason(result.fallback_reason)}); your prompt is unchanged.`)
      : h("p", { class: "hint" }, `By ${result.model} in ${result.latency_seconds.toFixed(1)} s.`);
    enhanced.replaceChildren(
      h("h2", {}, "Enhanced prompt"),
      h("blockquote", { class: "ws-enhanced-text" }, result.enhanced_prompt),
      note,
      h("div", { class: "row" }, result.fallback ? null : use, dismiss),
    );
    enhanced.hidden = false;
    (result.fallback ? dismiss : use).focus();
  }

  function hideEnhanced() {
    enhanced.hidden = true;
    enhanced.replaceChildren();
  }

  const form = h("form", { class: "ws-form card", novalidate: true, "aria-label": "Generate" },
    field("Prompt", prompt, "Ctrl+Enter (⌘+Enter) generates."),
    h("div", { class: "row ws-prompt-actions" }, enhanceButton),
    enhanced,
    field("Job type", jobType),
    typeHint,
    fields.quantity,
    fields.size,
    fields.frames,
    fields.seed,
    fields.negative,
    reference.el,
    h("div", { class: "ws-submit" }, generate),
  );
  // The hint sits under the select rather than inside field(): keep it attached.
  fields.quantity.before(typeHint);

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  enhanceButton.addEventListener("click", enhance);
  form.addEventListener("input", (event) => {
    // A corrected control drops its old error.
    event.target.removeAttribute("aria-invalid");
    event.target.closest(".field")?.querySelector(".field-error")?.remove();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldErrors(form, null);
    // An empty prompt goes to the API too: its answer names the field.
    const payload = body();
    await attempt(() => onSubmit(payload), { busy: generate, form });
  });

  /** What the form holds now, as `apply` takes it (the reference is not kept). */
  function settings() {
    return {
      job_type: jobType.value,
      prompt: prompt.value,
      negative_prompt: negative.value,
      width: Number(width.value),
      height: Number(height.value),
      num_images: Number(quantity.value) || 1,
      num_frames: Number(frames.value) || 0,
      lock_seed: lockSeed.checked,
      seed: seed.value === "" ? null : Number(seed.value),
    };
  }

  /** Fill the form from `s` (settings() of before, or a job's); what the
   * chosen type does not allow falls back to its defaults. */
  function apply(s) {
    if (!s || typeof s !== "object") return;
    if (byName[s.job_type]) jobType.value = s.job_type;
    applyType({ width: Number(s.width), height: Number(s.height), num_images: Number(s.num_images), num_frames: Number(s.num_frames) });
    if (typeof s.prompt === "string") prompt.value = s.prompt;
    if (typeof s.negative_prompt === "string") negative.value = s.negative_prompt;
    lockSeed.checked = Boolean(s.lock_seed) && Number.isInteger(s.seed);
    seed.disabled = !lockSeed.checked;
    seed.value = lockSeed.checked ? String(s.seed) : "";
    hideEnhanced();
    showFieldErrors(form, null);
  }

  function remember() {
    if (!storageKey) return;
    try {
      localStorage.setItem(storageKey, JSON.stringify(settings()));
    } catch {
      /* storage full or refused: the form still works, it only forgets */
    }
  }

  function recall() {
    try {
      return JSON.parse(localStorage.getItem(storageKey));
    } catch {
      return null;
    }
  }

  applyType();
  if (storageKey) {
    apply(recall());
    form.addEventListener("change", remember);
    form.addEventListener("input", remember);
    form.addEventListener("submit", remember);
  }
  return {
    el: form,
    focus: () => prompt.focus(),
    settings,
    /** Fill the form from settings (see `apply` above) and keep them. */
    apply(s) {
      apply(s);
      remember();
    },
    /** Make `upload` ({id, url}) the reference, switching to an SDXL type if needed. */
    useReference(upload) {
      if (!byName[jobType.value].accepts_reference) {
        const sdxl = types.find((t) => t.accepts_reference);
        if (sdxl) {
          jobType.value = sdxl.name;
          applyType();
        }
      }
      reference.set(upload);
      reference.el.scrollIntoView({ block: "nearest" });
    },
  };
}

function readableReason(reason) {
  if (!reason) return "no reason given";
  return reason.replace(/_/g, " ").toLowerCase();
}
