// Prompt templates: every version per target model (the active one marked);
// a selected version shows its stats, can be activated, edited (saved as a new
// version) and tested on sample prompts.
import { api } from "../api.js";
import { attempt, field, formatTime, h, mount, showFieldErrors, toast } from "../ui.js";

const BASE = "/v1/admin/prompt-templates";
const TARGETS = { sdxl: "SDXL", wan: "WAN" };

export function templatesSection() {
  const state = { templates: [], selected: null };
  const list = h("div", { class: "admin-templates" }, h("p", { class: "muted" }, "Loading templates…"));
  const detail = h("div", { class: "admin-detail" });

  /** Reload the list; the panel is rebuilt for `selectId` unless `keepPanel`
   * (activating keeps the test results on screen). */
  async function reload(selectId, { keepPanel = false } = {}) {
    const data = await attempt(() => api.get(BASE));
    if (!data) {
      mount(list, h("p", { class: "field-error" }, "The templates could not be loaded."));
      return;
    }
    state.templates = data.templates;
    drawList();
    const chosen = state.templates.find((t) => t.id === (selectId || state.selected?.id));
    if (chosen && keepPanel) state.selected = chosen;
    else if (chosen) select(chosen, { focus: false });
  }

  function drawList() {
    const groups = Object.keys(TARGETS).map((target) => {
      const mine = state.templates.filter((t) => t.target_model === target)
        .sort((a, b) => a.name.localeCompare(b.name) || b.version - a.version);
      return h("div", { class: "admin-group" },
        h("h3", {}, `${TARGETS[target]} templates`),
        mine.length ? h("div", { class: "table-wrap" }, h("table", { class: "admin-table", "aria-label": `${TARGETS[target]} templates` },
          h("thead", {}, h("tr", {}, ["Name", "Version", "Status", "Created", "Description", ""].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, mine.map(row)))) : h("p", { class: "muted" }, "No templates."));
    });
    mount(list, groups);
  }

  function row(t) {
    const open = h("button", { type: "button", "aria-label": `Open ${t.name} version ${t.version}` }, "Open");
    open.addEventListener("click", () => select(t, { focus: true }));
    return h("tr", { class: state.selected?.id === t.id ? "selected" : null },
      h("th", { scope: "row" }, t.name),
      h("td", { class: "num" }, `v${t.version}`),
      h("td", {}, t.active ? h("span", { class: "badge completed" }, "active") : h("span", { class: "muted" }, "—")),
      h("td", {}, formatTime(t.created_at)),
      h("td", { class: "admin-desc" }, t.description),
      h("td", {}, open));
  }

  function select(t, { focus }) {
    state.selected = t;
    drawList();
    mount(detail, versionPanel(t, { reload }));
    if (focus) detail.querySelector("h3")?.focus();
  }

  reload();
  return h("section", { class: "admin-templates-section", "aria-labelledby": "tpl-h" },
    h("h2", { id: "tpl-h" }, "Prompt templates"), list, detail);
}

/** One version: header with activate, stats, the edit form and the test form. */
function versionPanel(t, { reload }) {
  const heading = h("h3", { tabindex: "-1" }, `${t.name} v${t.version} (${TARGETS[t.target_model] || t.target_model})`,
    t.active ? h("span", { class: "badge completed" }, " active") : null);
  const activate = h("button", { type: "button", class: "primary" }, "Activate this version");
  activate.hidden = t.active;
  activate.addEventListener("click", async () => {
    const done = await attempt(() => api.post(`${BASE}/${t.id}/activate`), { busy: activate });
    if (!done) return;
    toast(`${t.name} v${t.version} is now active.`, "ok");
    heading.append(h("span", { class: "badge completed" }, " active"));
    activate.hidden = true;
    heading.focus();
    await reload(t.id, { keepPanel: true });
  });
  return h("div", { class: "card stack" }, h("div", { class: "row admin-detail-head" }, heading, activate),
    statsBlock(t), editForm(t, { reload }), testForm(t));
}

function statsBlock(t) {
  const box = h("dl", { class: "admin-stats", "aria-label": "Stats of this version" }, h("dt", {}, "Stats"), h("dd", {}, "Loading…"));
  api.get(`${BASE}/${t.id}/stats`).then((s) => {
    const pairs = [
      ["Enhancements", s.enhancements],
      ["Fallbacks", s.fallbacks],
      ["Mean latency", `${s.mean_latency_seconds.toFixed(2)} s`],
      ["Mean tokens in / out", `${s.mean_tokens_in.toFixed(1)} / ${s.mean_tokens_out.toFixed(1)}`],
      ["Ratings", s.ratings ? `${s.ratings} (mean ${s.mean_rating?.toFixed(2)})` : "none yet"],
    ];
    mount(box, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  }, (err) => mount(box, h("dt", {}, "Stats"), h("dd", { class: "field-error" }, err.message)));
  return box;
}

function numberInput(name, value, attrs) {
  return h("input", { type: "number", name, value: value ?? "", inputmode: "decimal", ...attrs });
}

/** The edit form: saving creates version latest + 1 with these fields. */
function editForm(t, { reload }) {
  const s = t.settings || {};
  const system = h("textarea", { name: "system_prompt", rows: 6 }, t.system_prompt);
  const user = h("textarea", { name: "user_template", rows: 3 }, t.user_template);
  const description = h("input", { name: "description", value: t.description });
  const temperature = numberInput("settings.temperature", s.temperature, { step: "0.05", min: "0", max: "2" });
  const topP = numberInput("settings.top_p", s.top_p, { step: "0.05", min: "0", max: "1" });
  const maxTokens = numberInput("settings.max_new_tokens", s.max_new_tokens, { step: "1", min: "1" });
  const seed = numberInput("settings.seed", s.seed, { step: "1", min: "1" });
  const activate = h("input", { type: "checkbox", name: "activate", id: `act-${t.id}` });
  const save = h("button", { type: "submit", class: "primary" }, "Save as new version");
  const form = h("form", { class: "admin-edit", novalidate: true, "aria-label": "Edit template" },
    h("h4", {}, "Edit (saved as a new version)"),
    field("System prompt", system),
    field("User template", user, "Where the user's prompt goes: {prompt}. Leave empty for the prompt alone."),
    field("Description", description),
    h("div", { class: "row admin-settings" },
      field("Temperature", temperature), field("Top p", topP), field("Max new tokens", maxTokens), field("Seed", seed)),
    h("div", { class: "admin-check" }, activate, h("label", { for: activate.id }, "Activate the new version")),
    save);

  const num = (el) => (el.value.trim() === "" ? undefined : Number(el.value));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldErrors(form, null);
    const settings = { temperature: num(temperature), top_p: num(topP), max_new_tokens: num(maxTokens), seed: num(seed) };
    const body = {
      system_prompt: system.value,
      user_template: user.value,
      description: description.value,
      settings: Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined)),
      activate: activate.checked,
    };
    const created = await attempt(() => api.post(`${BASE}/${t.id}/versions`, body), { busy: save, form });
    if (!created) return;
    toast(`Saved ${created.name} v${created.version}${created.active ? " (active)" : ""}.`, "ok");
    await reload(created.id);
  });
  return form;
}

/** Run this version over sample prompts and show each enhancement. */
function testForm(t) {
  const samples = h("textarea", { name: "sample_prompts", rows: 3 }, "a cat on a windowsill");
  const run = h("button", { type: "submit" }, "Run test");
  const results = h("ol", { class: "admin-results", "aria-label": "Test results" });
  const form = h("form", { class: "admin-test", novalidate: true, "aria-label": "Test template" },
    h("h4", {}, "Test on sample prompts"),
    field("Sample prompts", samples, "One per line."),
    run, results);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldErrors(form, null);
    const prompts = samples.value.split("\n").map((p) => p.trim()).filter(Boolean);
    if (!prompts.length) {
      showFieldErrors(form, { fields: { sample_prompts: "Enter at least one sample prompt." } });
      return;
    }
    mount(results, h("li", { class: "muted" }, "Running…"));
    const out = await attempt(() => api.post(`${BASE}/${t.id}/tests`, { sample_prompts: prompts }), { busy: run, form });
    mount(results, out ? out.tests.map(resultItem) : []);
  });
  return form;
}

function resultItem(test) {
  const r = test.result;
  return h("li", { class: "admin-result" },
    h("p", {}, h("strong", {}, "Sample: "), test.sample_prompt),
    h("p", {}, h("strong", {}, "Enhanced: "), r.enhanced_prompt),
    h("p", { class: "muted" },
      `${r.tokens_in} tokens in, ${r.tokens_out} out · ${r.latency_seconds.toFixed(2)} s · `,
      r.fallback ? h("span", { class: "badge failed" }, `fallback: ${r.fallback_reason || "yes"}`)
        : h("span", { class: "badge completed" }, "no fallback")));
}
