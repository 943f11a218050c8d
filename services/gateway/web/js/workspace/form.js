// The generation form: prompt (with its history), job type, size presets, the
// type's options (quantity, frames; size, seed and negative prompt under
// "Advanced"), the reference image and the enhance preview. It knows nothing
// of jobs: `onSubmit(body)` gets the POST /v1/jobs body.
import { api, currentUser } from "../api.js";
import { attempt, field, h, showFieldErrors } from "../ui.js";
import { referencePicker } from "./reference.js";

const GROUPS = [
  ["image", "Images"],
  ["video", "Videos"],
];

// How often the form asks which job types can run now, while it is shown.
const AVAILABILITY_MS = 15_000;

/** "SDXL image · fast · enhanced": what a person needs to choose a type. The
 * catalogue's expected times are nominal GPU figures, not measurements, so
 * they are not shown. */
export function typeLabel(t) {
  const parts = [`${t.worker.toUpperCase()} ${t.output}`, t.quality];
  if (t.enhanced) parts.push("enhanced");
  return parts.join(" · ");
}

function optionLabel(t) {
  return t.available === false ? `${typeLabel(t)} — not available now` : typeLabel(t);
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
      group.append(h("option", { value: t.name, title: t.unavailable_reason || "" }, optionLabel(t)));
    }
    if (group.children.length) select.append(group);
  }
  // Start on a type that can run now, when there is one.
  const ready = types.filter((t) => t.available !== false).map((t) => t.name);
  const first = [...select.options].find((o) => ready.includes(o.value));
  if (first) select.value = first.value;
  return select;
}

function options(values, selected, label = String) {
  return values.map((v) => h("option", { value: String(v), selected: v === selected }, label(v)));
}

/** WAN needs 4k+1 frames: 5, 9, 13 ... up to the type's maximum. */
function frameChoices(t) {
  const out = [];
  for (let n = 5; n <= (t.max_num_frames || t.default_num_frames); n += 4) out.push(n);
  if (!out.includes(t.default_num_frames)) out.push(t.default_num_frames);
  return out.sort((a, b) => a - b);
}

/** "81 frames · 5.1 s": a frame count and the length of video it makes. */
function framesText(n, fps) {
  return fps ? `${n} frames · ${(n / fps).toFixed(1)} s` : `${n} frames`;
}

function randomSeed() {
  const v = new Uint32Array(1);
  crypto.getRandomValues(v);
  return (v[0] % 2147483646) + 1;
}

// --- size presets -------------------------------------------------------------
// The sizes each model family was trained at, as [ratio, width, height, tag]:
// SDXL's buckets around one megapixel, WAN's 480p and 720p.
const SIZE_PRESETS = {
  sdxl: [
    ["1:1", 1024, 1024], ["9:7", 1152, 896], ["7:9", 896, 1152], ["3:2", 1216, 832], ["2:3", 832, 1216],
    ["16:9", 1344, 768], ["9:16", 768, 1344], ["21:9", 1536, 640], ["9:21", 640, 1536],
  ],
  wan: [["16:9", 832, 480, "480p"], ["9:16", 480, 832, "480p"], ["16:9", 1280, 720, "720p"], ["9:16", 720, 1280, "720p"]],
};

/** The presets a type's sizes allow. Where the catalogue's largest size is
 * smaller, a preset is scaled down to fit, on the type's size multiple, keeping
 * its shape (and losing its "720p"-style tag); one that cannot keep its shape
 * or fit is left out, and so is one whose shape another preset already gives. */
export function sizePresets(t) {
  const widths = t.allowed_widths || [];
  const heights = t.allowed_heights || [];
  if (!widths.length || !heights.length) return [];
  const fits = (w, ht) => widths.includes(w) && heights.includes(ht);
  const step = t.size_multiple || 1;
  const maxW = Math.max(...widths);
  const maxH = Math.max(...heights);
  const out = [];
  for (const [ratio, w0, h0, tag] of SIZE_PRESETS[t.worker] || []) {
    if (fits(w0, h0)) {
      out.push({ ratio, width: w0, height: h0, tag });
      continue;
    }
    const scale = Math.min(maxW / w0, maxH / h0);
    if (scale >= 1 || out.some((p) => p.ratio === ratio)) continue;
    const w = Math.min(maxW, Math.round((w0 * scale) / step) * step);
    const ht = Math.min(maxH, Math.round((h0 * scale) / step) * step);
    if (fits(w, ht) && Math.abs(w / ht - w0 / h0) <= 0.05 * (w0 / h0)) out.push({ ratio, width: w, height: ht });
  }
  return out;
}

/** The presets as a radio group of chips: choosing one sets the width and
 * height selects (under "Advanced"); a size set there checks its preset, or
 * none for a custom size. */
function sizePresetPicker(width, height) {
  const chips = h("div", { class: "ws-chips" });
  const custom = h("small", { class: "hint ws-custom-size", hidden: true });
  const el = h("fieldset", { class: "ws-presets", role: "radiogroup" }, h("legend", {}, "Size"), chips, custom);

  function chip(p) {
    const input = h("input", { type: "radio", name: "size_preset", value: `${p.width}x${p.height}` });
    input.addEventListener("change", () => {
      if (!input.checked) return;
      width.value = String(p.width);
      height.value = String(p.height);
      sync();
    });
    // Through the CSSOM: the page's CSP refuses style attributes.
    const shape = h("span", { class: "ws-chip-shape", "aria-hidden": "true" });
    shape.style.aspectRatio = `${p.width} / ${p.height}`;
    return h("label", { class: "ws-chip" },
      input,
      shape,
      h("span", { class: "ws-chip-ratio" }, p.tag ? `${p.ratio} ${p.tag}` : p.ratio),
      " ",
      h("span", { class: "ws-chip-size" }, `${p.width}×${p.height}`));
  }

  function render(t) {
    const presets = sizePresets(t);
    chips.replaceChildren(...presets.map(chip));
    el.hidden = presets.length === 0;
    sync();
  }

  /** Check the preset of the width and height now set (call after setting them in code). */
  function sync() {
    const value = `${width.value}x${height.value}`;
    let found = false;
    for (const input of chips.querySelectorAll("input")) {
      input.checked = input.value === value;
      found ||= input.checked;
    }
    custom.hidden = found;
    custom.textContent = found ? "" : `Custom size: ${width.value}×${height.value} (under Advanced).`;
  }

  width.addEventListener("change", sync);
  height.addEventListener("change", sync);
  return { el, render, sync };
}

// --- prompt history -----------------------------------------------------------
// The last prompts submitted, newest first, kept in this browser per account.
const HISTORY_MAX = 20;

function historyKey() {
  return `ourvidz.prompts.${currentUser()?.email || ""}`;
}

function readHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(historyKey()) || "[]");
    return Array.isArray(list) ? list.filter((p) => typeof p === "string" && p) : [];
  } catch {
    return [];
  }
}

function remember(text) {
  const list = [text, ...readHistory().filter((p) => p !== text)].slice(0, HISTORY_MAX);
  try {
    localStorage.setItem(historyKey(), JSON.stringify(list));
  } catch {
    /* storage full or turned off: the history is a convenience */
  }
}

/** A "History" button opening a listbox of recent prompts (arrows, Enter,
 * Escape); ↑ in the empty prompt box recalls the last one, and ↑ again older ones. */
function promptHistory(prompt) {
  const id = `ws-history-${Math.random().toString(36).slice(2, 8)}`;
  const button = h("button", { type: "button", "aria-haspopup": "listbox", "aria-expanded": "false", "aria-controls": id }, "History");
  const list = h("ul", { class: "ws-history", id, role: "listbox", "aria-label": "Recent prompts", tabindex: "-1", hidden: true });
  let active = 0;
  let recalled = -1; // the history entry ↑ put in the prompt box

  const items = () => [...list.children];
  const refresh = () => {
    button.disabled = readHistory().length === 0;
    button.title = button.disabled ? "The prompts you generate with will be listed here." : "";
  };

  function open() {
    list.replaceChildren(...readHistory().map((text, i) =>
      h("li", { role: "option", id: `${id}-${i}`, class: "ws-history-item", "aria-selected": "false" }, text)));
    if (!list.children.length) return;
    list.hidden = false;
    button.setAttribute("aria-expanded", "true");
    move(0);
    list.focus();
  }

  function close(focusButton) {
    list.hidden = true;
    button.setAttribute("aria-expanded", "false");
    list.removeAttribute("aria-activedescendant");
    if (focusButton) button.focus();
  }

  function move(i) {
    const all = items();
    active = (i + all.length) % all.length;
    all.forEach((o, j) => o.setAttribute("aria-selected", String(j === active)));
    list.setAttribute("aria-activedescendant", all[active].id);
    all[active].scrollIntoView({ block: "nearest" });
  }

  function choose(i) {
    const option = items()[i];
    if (!option) return;
    prompt.value = option.textContent;
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
    close(false);
    prompt.focus();
  }

  button.addEventListener("click", () => (list.hidden ? open() : close(true)));
  list.addEventListener("click", (event) => {
    const option = event.target.closest('[role="option"]');
    if (option) choose(items().indexOf(option));
  });
  list.addEventListener("keydown", (event) => {
    const keys = {
      ArrowDown: () => move(active + 1),
      ArrowUp: () => move(active - 1),
      Home: () => move(0),
      End: () => move(-1),
      Enter: () => choose(active),
      " ": () => choose(active),
      Escape: () => close(true),
    };
    // Ctrl+Enter still generates; Tab leaves as usual.
    if (event.ctrlKey || event.metaKey || !keys[event.key]) return;
    event.preventDefault();
    event.stopPropagation();
    keys[event.key]();
  });
  list.addEventListener("focusout", (event) => {
    if (!list.contains(event.relatedTarget) && event.relatedTarget !== button) close(false);
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowUp" || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    const past = readHistory();
    const atStart = prompt.selectionStart === 0 && prompt.selectionEnd === 0;
    const onRecalled = recalled >= 0 && prompt.value === past[recalled] && atStart;
    const next = prompt.value === "" ? 0 : onRecalled ? recalled + 1 : -1;
    if (next < 0 || next >= past.length) return;
    event.preventDefault();
    recalled = next;
    prompt.value = past[next];
    prompt.setSelectionRange(0, 0);
  });

  refresh();
  return {
    button,
    list,
    /** A prompt just submitted: first in the history. */
    record(text) {
      if (!text) return;
      remember(text);
      recalled = -1;
      refresh();
    },
  };
}

// --- the form -----------------------------------------------------------------

const SHORTCUT = /Mac|iPhone|iPad/.test(navigator.platform) ? "⌘+Enter" : "Ctrl+Enter";

/**
 * The form. `signal` (optional) ends what the form does while it is shown:
 * the availability refresh and the page-wide paste of a reference image. With
 * `storageKey`, its settings are kept in localStorage under that key as they
 * change and come back when the form is made again.
 */
export function createForm({ types, onSubmit, signal, storageKey }) {
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
  const presets = sizePresetPicker(width, height);
  const reference = referencePicker();
  const recent = promptHistory(prompt);
  const generate = h("button", { type: "submit", class: "primary", "aria-keyshortcuts": "Control+Enter Meta+Enter" },
    "Generate", h("kbd", { class: "ws-shortcut", "aria-hidden": "true" }, SHORTCUT));
  const enhanceButton = h("button", { type: "button" }, "Enhance prompt");
  const enhanced = h("section", { class: "ws-enhanced card", "aria-label": "Enhanced prompt", hidden: true });

  const fields = {
    quantity: field("Quantity", quantity),
    negative: field("Negative prompt", negative),
    seed: h("div", { class: "ws-seed" },
      h("label", { class: "ws-check" }, lockSeed, " Lock seed"),
      field("Seed", seed, "Random unless locked; every result shows its seed.")),
    size: h("div", { class: "ws-size" }, field("Width", width), field("Height", height)),
    frames: field("Frames", frames, "The video's length."),
  };
  const framesHint = fields.frames.querySelector(".hint");
  const advanced = h("details", { class: "ws-advanced" },
    h("summary", {}, "Advanced"),
    h("div", { class: "ws-advanced-body" }, fields.size, fields.seed, fields.negative));

  lockSeed.addEventListener("change", () => {
    seed.disabled = !lockSeed.checked;
    if (lockSeed.checked && !seed.value) seed.value = String(randomSeed());
    if (lockSeed.checked) seed.focus();
  });

  /** What the chosen type needs said: why it cannot run now, if it cannot. */
  function showTypeHint() {
    const t = byName[jobType.value];
    const unavailable = t.available === false && `Not available now: ${t.unavailable_reason}; a job waits in the queue until it is.`;
    typeHint.textContent = unavailable || "";
    typeHint.hidden = !unavailable;
    typeHint.classList.toggle("warn", Boolean(unavailable));
  }

  function showFramesHint() {
    const t = byName[jobType.value];
    const n = Number(frames.value);
    framesHint.textContent = t.fps ? `A ${(n / t.fps).toFixed(1)} s video: ${n} frames at ${t.fps} frames a second.` : "";
  }
  frames.addEventListener("change", showFramesHint);

  let shownType = null; // the type whose controls are shown

  /** Show the controls the chosen type takes, with its sizes and defaults;
   * `want` names values to choose where the type allows them. */
  function applyType(want = {}) {
    const t = byName[jobType.value];
    showTypeHint();
    const multi = t.allowed_num_images.length > 1;
    fields.quantity.hidden = !multi;
    quantity.replaceChildren(...options(t.allowed_num_images, want.num_images || Number(quantity.value) || 1));
    fields.negative.hidden = t.worker !== "sdxl";
    fields.seed.hidden = false;
    // The size asked for, or the one chosen so far, stays when the new type
    // allows it; one of the old family's presets that is no preset here gives
    // way to the type's default.
    const keepW = Number(want.width) || Number(width.value);
    const keepH = Number(want.height) || Number(height.value);
    const isPreset = (type) => sizePresets(type).some((p) => p.width === keepW && p.height === keepH);
    const keep = t.allowed_widths.includes(keepW) && t.allowed_heights.includes(keepH)
      && (Boolean(want.width) || !(shownType && isPreset(shownType) && !isPreset(t)));
    width.replaceChildren(...options(t.allowed_widths, keep ? keepW : t.default_width));
    height.replaceChildren(...options(t.allowed_heights, keep ? keepH : t.default_height));
    shownType = t;
    presets.render(t);
    fields.frames.hidden = t.output !== "video";
    if (t.output === "video") {
      const keep = want.num_frames || Number(frames.value) || t.default_num_frames;
      const choices = frameChoices(t);
      frames.replaceChildren(...options(choices, choices.includes(keep) ? keep : t.default_num_frames, (n) => framesText(n, t.fps)));
      showFramesHint();
    }
    reference.el.hidden = !t.accepts_reference;
  }
  jobType.addEventListener("change", () => applyType());

  /** A reference needs a type that takes one: switch to the first that does. */
  function takeReference() {
    if (byName[jobType.value].accepts_reference) return true;
    const sdxl = types.find((t) => t.accepts_reference);
    if (!sdxl) return false;
    jobType.value = sdxl.name;
    applyType();
    return true;
  }

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
    field("Prompt", prompt, "↑ in the empty box recalls your last prompt."),
    h("div", { class: "row ws-prompt-actions" }, enhanceButton, recent.button),
    recent.list,
    enhanced,
    field("Job type", jobType),
    typeHint,
    presets.el,
    fields.quantity,
    fields.frames,
    reference.el,
    advanced,
    h("div", { class: "ws-submit" }, generate),
  );

  // Ctrl+Enter (⌘+Enter) anywhere in the form generates.
  form.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
    event.preventDefault();
    if (!generate.disabled) form.requestSubmit();
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
    await attempt(async () => {
      await onSubmit(payload);
      recent.record(payload.prompt);
    }, { busy: generate, form });
  });

  // --- availability: which types can run now, asked again while shown --------
  /** Fresh availability (GET /v1/job-types): the options and the hint follow it. */
  function updateAvailability(fresh) {
    for (const f of fresh) {
      const t = byName[f.name];
      if (!t) continue;
      t.available = f.available;
      t.unavailable_reason = f.unavailable_reason;
      const option = [...jobType.options].find((o) => o.value === t.name);
      if (option) {
        option.textContent = optionLabel(t);
        option.title = t.unavailable_reason || "";
      }
    }
    showTypeHint();
  }

  function watchAvailability() {
    const timer = setInterval(async () => {
      if (document.hidden) return;
      try {
        updateAvailability((await api.get("/v1/job-types", { signal })).items);
      } catch {
        /* asked again on the next tick */
      }
    }, AVAILABILITY_MS);
    signal.addEventListener("abort", () => clearInterval(timer));
  }

  // --- an image pasted anywhere on the page becomes the reference -------------
  function listenForPaste() {
    document.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (!files.length) return; // text pastes as usual
      event.preventDefault();
      const image = files.find((f) => f.type.startsWith("image/"));
      if (image && takeReference()) reference.useFile(image);
      else if (!image) reference.useFile(files[0]); // says why it cannot be used
    }, { signal });
  }

  if (signal) {
    watchAvailability();
    listenForPaste();
  }

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

  function rememberSettings() {
    if (!storageKey) return;
    try {
      localStorage.setItem(storageKey, JSON.stringify(settings()));
    } catch {
      /* storage full or refused: the form still works, it only forgets */
    }
  }

  function recallSettings() {
    try {
      return JSON.parse(localStorage.getItem(storageKey));
    } catch {
      return null;
    }
  }

  applyType();
  if (storageKey) {
    apply(recallSettings());
    form.addEventListener("change", rememberSettings);
    form.addEventListener("input", rememberSettings);
    form.addEventListener("submit", rememberSettings);
  }
  return {
    el: form,
    focus: () => prompt.focus(),
    settings,
    /** Fill the form from settings (see `apply` above) and keep them. */
    apply(s) {
      apply(s);
      rememberSettings();
    },
    /** Make `upload` ({id, url}) the reference, switching to an SDXL type if needed. */
    useReference(upload) {
      takeReference();
      reference.set(upload);
      reference.el.scrollIntoView({ block: "nearest" });
    },
  };
}

function readableReason(reason) {
  if (!reason) return "no reason given";
  return reason.replace(/_/g, " ").toLowerCase();
}
