// The jobs page: the user's jobs, newest first, filtered by state and type
// (the filters live in the hash, `#/jobs?state=failed&type=video_fast`, so a
// reload or Back keeps them), paged with "Load more". Each row can be
// cancelled, retried, re-run exactly or reused in the workspace's form; rows
// of jobs under way are refreshed every few seconds while the page is shown.
import { api, idempotencyKey } from "../api.js";
import { attempt, field, formatTime, h, mount, showError, toast } from "../ui.js";
import { typeLabel } from "../workspace/form.js";
import { ACTIVE, durationText, jobSettings, retryBody } from "../workspace/jobs.js";
import { REUSE_KEY } from "./workspace.js";

const PAGE_SIZE = 20;
const POLL_MS = 3000;
const PROMPT_CHARS = 120;
const STATES = [
  ["queued", "Queued"],
  ["enhancing", "Enhancing"],
  ["running", "Running"],
  ["completed", "Completed"],
  ["failed", "Failed"],
  ["cancelled", "Cancelled"],
];
const STATE_TEXT = Object.fromEntries(STATES);

/** The filters in the hash's query: {state, type}, "" for none. */
function filtersFromHash() {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  return { state: query.get("state") || "", type: query.get("type") || "" };
}

function hashOf({ state, type }) {
  const query = new URLSearchParams();
  if (state) query.set("state", state);
  if (type) query.set("type", type);
  const text = query.toString();
  return text ? `#/jobs?${text}` : "#/jobs";
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

export function render(main, { navigate }) {
  const controller = new AbortController();
  const { signal } = controller;
  let timer = null;
  mount(main, h("h1", {}, "Jobs"), h("p", { class: "muted", role: "status" }, "Loading…"));
  attempt(() => start(main, signal, navigate, (t) => (timer = t)));
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}

async function start(main, signal, navigate, setTimer) {
  const catalog = await api.get("/v1/job-types", { signal });
  if (signal.aborted) return;
  const byName = Object.fromEntries(catalog.items.map((t) => [t.name, t]));
  const nameOf = (jobType) => (byName[jobType] ? typeLabel(byName[jobType]) : jobType);

  const wanted = filtersFromHash();
  const stateSelect = h("select", { name: "state" },
    h("option", { value: "" }, "Any state"),
    STATES.map(([value, label]) => h("option", { value }, label)));
  const typeSelect = h("select", { name: "job_type" },
    h("option", { value: "" }, "Any type"),
    catalog.items.map((t) => h("option", { value: t.name }, typeLabel(t))));
  // A value the selects do not offer (an old link) counts as no filter.
  stateSelect.value = STATE_TEXT[wanted.state] ? wanted.state : "";
  typeSelect.value = byName[wanted.type] ? wanted.type : "";

  const filters = h("form", { class: "card jobs-filters", "aria-label": "Filters" },
    h("div", { class: "row" }, field("State", stateSelect), field("Job type", typeSelect)));
  const status = h("p", { class: "muted jobs-status", role: "status", "aria-live": "polite" });
  const body = h("tbody");
  const table = h("table", { class: "jobs-table", "aria-labelledby": "jobs-title" },
    h("caption", { class: "visually-hidden" }, "Your jobs, newest first"),
    h("thead", {}, h("tr", {},
      ["Job", "Prompt", "State", "Created", "Duration", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
    body);
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const rows = new Map(); // job id -> {job, tr}
  let next = "";
  let loading = null;
  let polling = false;

  mount(main,
    h("h1", { id: "jobs-title" }, "Jobs"),
    filters,
    status,
    table,
    h("div", { class: "jobs-more" }, more),
  );

  function current() {
    return { state: stateSelect.value, type: typeSelect.value };
  }

  function matches(job) {
    const f = current();
    return (!f.state || job.state === f.state) && (!f.type || job.job_type === f.type);
  }

  async function load(reset) {
    const f = current();
    const params = new URLSearchParams({ page_size: String(PAGE_SIZE) });
    if (f.state) params.set("state", f.state);
    if (f.type) params.set("job_type", f.type);
    if (!reset) params.set("page_token", next);
    // A newer load (filters changed) wins over one still under way.
    const ticket = {};
    loading = ticket;
    more.disabled = true;
    if (reset) status.textContent = "Loading…";
    try {
      const page = await api.get(`/v1/jobs?${params}`, { signal });
      if (loading !== ticket) return;
      if (reset) {
        rows.clear();
        body.replaceChildren();
      }
      for (const job of page.items) if (!rows.has(job.id)) body.append(addRow(job));
      next = page.next_page_token;
      more.hidden = !next;
      showCount();
      schedulePoll();
    } catch (err) {
      if (loading === ticket) {
        status.textContent = "";
        showError(err);
      }
    } finally {
      if (loading === ticket) more.disabled = false;
    }
  }

  function showCount() {
    table.hidden = rows.size === 0;
    if (rows.size === 0) {
      const filtered = stateSelect.value || typeSelect.value;
      status.replaceChildren(filtered
        ? "No jobs match these filters."
        : h("span", {}, "No jobs yet. ", h("a", { href: "#/workspace" }, "Start one in the workspace"), "."));
    } else {
      status.textContent = `${rows.size} job${rows.size === 1 ? "" : "s"} shown${next ? "; more below" : ""}.`;
    }
  }

  function addRow(job) {
    const row = { job, tr: rowElement(job) };
    rows.set(job.id, row);
    return row.tr;
  }

  /** Show `job`'s newer state in its row, keeping focus on the same action
   * (or the row's first, when that one is gone). `from`: the action that
   * changed it, which had the focus (a busy, disabled button loses it). */
  function update(job, from) {
    const row = rows.get(job.id);
    if (!row) return;
    const old = row.tr;
    const focused = old.contains(document.activeElement) ? document.activeElement.textContent : from ?? null;
    row.job = job;
    row.tr = rowElement(job);
    old.replaceWith(row.tr);
    if (focused !== null) {
      const buttons = [...row.tr.querySelectorAll("button")];
      (buttons.find((b) => b.textContent === focused) || buttons[0] || row.tr.querySelector("a"))?.focus();
    }
  }

  /** A job made from a row (retry, re-run): on top when the filters show it. */
  function added(job) {
    if (!matches(job) || rows.has(job.id)) return;
    body.prepend(addRow(job));
    showCount();
    schedulePoll();
  }

  function rowElement(job) {
    const t = byName[job.job_type];
    const asset = job.state === "completed" ? job.assets?.[0] : null;
    const thumb = asset?.thumbnail_url || (asset?.content_type?.startsWith("image/") ? asset.url : null);
    const actions = [];
    if (ACTIVE.has(job.state)) actions.push(button("Cancel", "danger", (label) => cancel(job, label)));
    if (job.state === "failed" || job.state === "cancelled") actions.push(button("Retry", "", () => retry(job, t)));
    if (job.state === "completed") actions.push(button("Re-run exactly", "", () => rerun(job)));
    actions.push(button("Reuse settings", "", () => reuse(job)));
    const size = `${job.width}×${job.height}${job.num_frames > 1 ? `, ${job.num_frames} frames` : ""}`;
    return h("tr", { class: "jobs-row", dataset: { state: job.state || "", id: job.id } },
      h("td", { "data-label": "Job" },
        h("div", { class: "jobs-type" },
          thumb ? h("img", { class: "jobs-thumb", src: thumb, alt: "", loading: "lazy", width: 48, height: 48 }) : null,
          h("div", {}, h("span", {}, t ? typeLabel(t) : job.job_type), h("br"), h("small", { class: "hint" }, size)))),
      h("td", { "data-label": "Prompt", class: "jobs-prompt" },
        h("span", { title: job.prompt }, truncate(job.prompt, PROMPT_CHARS)),
        job.state === "failed"
          ? h("p", { class: "jobs-error" }, `Failed: ${job.error?.message || "the job could not be completed."}`)
          : null),
      h("td", { "data-label": "State" }, h("span", { class: `badge ${job.state}` }, STATE_TEXT[job.state] || job.state)),
      h("td", { "data-label": "Created" }, h("time", { datetime: job.created_at || "" }, formatTime(job.created_at))),
      h("td", { "data-label": "Duration" }, durationText(job) || "—"),
      h("td", { "data-label": "Actions" },
        h("div", { class: "jobs-actions", role: "group", "aria-label": `Actions for ${truncate(job.prompt, 60)}` }, actions)),
    );
  }

  function button(label, cls, action) {
    const b = h("button", { type: "button", class: cls || null }, label);
    b.addEventListener("click", async () => {
      await attempt(() => action(label), { busy: b });
      // A button disabled while busy loses the focus: it gets it back, unless
      // it is gone (its row redrawn, the page left) or focus went elsewhere.
      if (b.isConnected && (!document.activeElement || document.activeElement === document.body)) b.focus();
    });
    return b;
  }

  async function cancel(job, label) {
    update(await api.post(`/v1/jobs/${job.id}/cancel`, {}, { signal }), label);
  }

  async function retry(job, t) {
    const made = await api.post("/v1/jobs", retryBody(job, t), { headers: { "Idempotency-Key": idempotencyKey() }, signal });
    toast(`Started again: ${nameOf(made.job_type)}.`, "ok");
    added(made);
  }

  async function rerun(job) {
    const made = await api.post(`/v1/jobs/${job.id}/rerun`, {}, { headers: { "Idempotency-Key": idempotencyKey() }, signal });
    toast(`Re-run started: ${nameOf(made.job_type)}.`, "ok");
    added(made);
  }

  function reuse(job) {
    try {
      sessionStorage.setItem(REUSE_KEY, JSON.stringify(jobSettings(job)));
    } catch {
      /* without storage the workspace opens with its own settings */
    }
    navigate("#/workspace");
  }

  /** While any row's job is under way, fetch those jobs every few seconds. */
  function schedulePoll() {
    if (signal.aborted || polling) return;
    if (![...rows.values()].some((r) => ACTIVE.has(r.job.state))) return;
    polling = true;
    setTimer(setTimeout(poll, POLL_MS));
  }

  async function poll() {
    const active = [...rows.values()].filter((r) => ACTIVE.has(r.job.state)).slice(0, 10);
    for (const r of active) {
      if (signal.aborted) return;
      try {
        const job = await api.get(`/v1/jobs/${r.job.id}`, { signal });
        if (job.state !== r.job.state) update(job);
      } catch {
        /* the next round asks again */
      }
    }
    polling = false;
    schedulePoll();
  }

  // A changed filter goes into the address (a history entry, so Back returns
  // to the filters before) and lists again, focus staying on the filter.
  filters.addEventListener("change", () => {
    const hash = hashOf(current());
    if (location.hash !== hash) history.pushState(null, "", hash);
    load(true);
  });
  filters.addEventListener("submit", (event) => event.preventDefault());
  more.addEventListener("click", () => load(false));

  await load(true);
}
