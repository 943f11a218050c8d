// The workspace: the generation form beside the active session's jobs and
// results. The session's stream keeps cards and the grid live; a reload
// restores the session's items, the user's recent jobs (finished ones with
// their outcome) and the form's last settings.
import { api, idempotencyKey, stream } from "../api.js";
import { attempt, h, mount, showError, toast } from "../ui.js";
import { createForm, typeLabel } from "../workspace/form.js";
import { ACTIVE, createJobList, retryBody } from "../workspace/jobs.js";
import { uploadFromUrl } from "../workspace/reference.js";
import { createResults } from "../workspace/results.js";

// How many of the user's latest jobs a reload shows as cards.
const RECENT_JOBS = 10;
// Settings handed over by the jobs page's "Reuse settings" (sessionStorage).
export const REUSE_KEY = "ourvidz.reuse";
// Dismissed or cleared cards a reload leaves out: the latest ids, per user.
const HIDDEN_JOBS = 100;

/** The ids of the finished jobs whose cards were taken away, kept in
 * localStorage under `key` (null: nothing kept). */
function hiddenJobs(key) {
  let ids = [];
  try {
    ids = (key && JSON.parse(localStorage.getItem(key))) || [];
  } catch {
    /* unreadable: none hidden */
  }
  return {
    has: (id) => ids.includes(id),
    add(more) {
      ids = [...ids.filter((id) => !more.includes(id)), ...more].slice(-HIDDEN_JOBS);
      try {
        if (key) localStorage.setItem(key, JSON.stringify(ids));
      } catch {
        /* storage refused: a reload shows them again */
      }
    },
  };
}

/** The user's active session (the one new jobs go to), created when there is none. */
async function activeSession(signal) {
  const page = await api.get("/v1/workspace/sessions?page_size=50", { signal });
  return page.items.find((s) => s.active) || api.post("/v1/workspace/sessions", {}, { signal });
}

async function allPages(path, signal) {
  const out = [];
  let token = "";
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api.get(`${path}${sep}page_size=100&page_token=${encodeURIComponent(token)}`, { signal });
    out.push(...page.items);
    token = page.next_page_token;
  } while (token && out.length < 1000);
  return out;
}

export function render(main, { user } = {}) {
  const controller = new AbortController();
  const { signal } = controller;
  mount(main, h("h1", {}, "Workspace"), h("p", { class: "muted", role: "status" }, "Loading…"));
  attempt(() => start(main, signal, user));
  return () => {
    controller.abort();
    document.querySelector("dialog.gallery")?.remove();
  };
}

/** Settings left by "Reuse settings", taken once. */
function takeReused() {
  try {
    const raw = sessionStorage.getItem(REUSE_KEY);
    sessionStorage.removeItem(REUSE_KEY);
    return raw ? JSON.parse(raw) : null;
  } catch {
    return null;
  }
}

async function start(main, signal, user) {
  const [catalog, session] = await Promise.all([api.get("/v1/job-types", { signal }), activeSession(signal)]);
  if (signal.aborted) return;
  const types = catalog.items;
  const byName = Object.fromEntries(types.map((t) => [t.name, t]));
  const hidden = hiddenJobs(user?.email ? `ourvidz.hidden-jobs.${user.email}` : null);
  const jobs = createJobList({
    types,
    signal,
    onRetry: (job) => submit(retryBody(job, byName[job.job_type])),
    onDismiss: (ids) => hidden.add(ids),
  });
  const typeName = (name) => (byName[name] ? typeLabel(byName[name]) : name);
  const results = createResults({ actions: { runAgain, useAsReference }, typeName });
  const storageKey = user?.email ? `ourvidz.form.${user.email}` : null;
  const form = createForm({ types, onSubmit: submit, signal, storageKey });
  const reused = takeReused();
  if (reused) form.apply(reused);
  const clear = h("button", { type: "button", class: "danger" }, "Clear session");
  const sessionName = h("span", { class: "muted" }, session.name);

  const layout = h("div", { class: "ws-layout" },
    h("div", { class: "ws-side" }, form.el),
    h("section", { class: "ws-main", "aria-labelledby": "ws-session-title" },
      h("div", { class: "ws-session-bar" },
        h("h2", { id: "ws-session-title" }, "Session ", sessionName),
        clear),
      jobs.el,
      results.el),
  );
  mount(main, h("h1", {}, "Workspace"), layout);
  markBusy(layout, jobs.el, signal);
  clear.addEventListener("click", () => confirmClear(clear, session, jobs, results));

  async function submit(body) {
    const response = await api.post("/v1/jobs", body, { headers: { "Idempotency-Key": idempotencyKey() } });
    jobs.add(response);
    const t = byName[body.job_type];
    toast(`Started: ${t ? typeLabel(t) : body.job_type}.`, "ok");
  }

  /** Run an item's job again: same settings (from the job), one output, its seed or a new one. */
  async function runAgain(item, sameSeed) {
    const job = await api.get(`/v1/jobs/${item.job_id}`, { signal });
    const body = {
      job_type: job.job_type,
      prompt: job.prompt,
      width: job.width,
      height: job.height,
    };
    if (byName[job.job_type]?.allowed_num_images.length > 1) body.num_images = 1;
    if (job.negative_prompt) body.negative_prompt = job.negative_prompt;
    if (byName[job.job_type]?.output === "video") body.num_frames = job.num_frames;
    if (sameSeed) body.seed = item.seed;
    if (job.reference_image_id) {
      Object.assign(body, {
        reference_image_id: job.reference_image_id,
        reference_type: job.reference_type,
        reference_strength: job.reference_strength,
      });
    }
    await submit(body);
  }

  async function useAsReference(item) {
    const upload = await uploadFromUrl(item.url);
    form.useReference({ id: upload.id, url: item.thumbnail_url || item.url, label: item.prompt });
  }

  jobs.onFinished((job, state) => {
    if (state === "completed") loadItems();
  });

  // Live first, then what is already there: nothing filed in between is missed.
  watchSession(session, jobs, results, loadItems, signal);
  await loadItems();
  // The user's latest jobs, however they ended (less those whose cards were
  // dismissed or cleared), and any of this session's still under way: oldest
  // first, as each new card goes on top.
  const pages = await Promise.all([
    api.get(`/v1/jobs?page_size=${RECENT_JOBS}`, { signal }),
    ...[...ACTIVE].map((state) => api.get(`/v1/jobs?state=${state}&page_size=100`, { signal })),
  ]);
  const [recent, ...active] = pages.map((p) => p.items);
  const shown = new Map(recent.filter((j) => ACTIVE.has(j.state) || !hidden.has(j.id)).map((j) => [j.id, j]));
  for (const job of active.flat()) if (job.workspace_session_id === session.id) shown.set(job.id, job);
  const restored = [...shown.values()].sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
  for (const job of restored) jobs.add(job);
  // To the prompt, unless the person has already moved on while this loaded.
  if ([main, document.body].includes(document.activeElement)) form.focus();

  async function loadItems() {
    try {
      for (const item of await allPages(`/v1/workspace/sessions/${session.id}/items`, signal)) results.add(item);
    } catch (err) {
      showError(err);
    }
  }
}

/** `ws-busy` on the layout while a job card is queued or running: on a phone
 * the jobs and results then come before the form. */
function markBusy(layout, list, signal) {
  const update = () => layout.classList.toggle("ws-busy", [...list.children].some((c) => ACTIVE.has(c.dataset.state)));
  const observer = new MutationObserver(update);
  observer.observe(list, { childList: true, subtree: true, attributeFilter: ["data-state"] });
  signal.addEventListener("abort", () => observer.disconnect());
  update();
}

/** The session's stream: job states and progress, and items as they are filed. */
async function watchSession(session, jobs, results, reload, signal) {
  for (let failures = 0; !signal.aborted && failures < 5; ) {
    try {
      await stream(`/v1/workspace/sessions/${session.id}/events`, (name, data) => {
        if (name === "item") results.add(data.item);
        else if (name !== "error" && data.job_id) jobs.event(data);
      }, { signal, resume: false });
      failures = 0;
    } catch {
      failures++;
    }
    if (signal.aborted) return;
    // The stream ended (server restart, network): catch up, then listen again.
    await new Promise((resolve) => setTimeout(resolve, 1000 * (failures + 1)));
    await reload();
  }
  if (!signal.aborted) toast("Live updates stopped; reload the page to see new results.", "error");
}

/** Clearing deletes the session's unsaved results: ask first, in a dialog. */
function confirmClear(opener, session, jobs, results) {
  const yes = h("button", { type: "button", class: "primary danger-fill" }, "Clear");
  const no = h("button", { type: "button" }, "Keep");
  const dialog = h("dialog", { class: "ws-dialog", "aria-labelledby": "ws-clear-title", "aria-describedby": "ws-clear-text" },
    h("h2", { id: "ws-clear-title" }, "Clear this session?"),
    h("p", { id: "ws-clear-text" }, "Its results are deleted, except those saved to the library."),
    h("div", { class: "row" }, yes, no),
  );
  no.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    opener.focus();
  });
  yes.addEventListener("click", async () => {
    const reply = await attempt(() => api.post(`/v1/workspace/sessions/${session.id}/clear`), { busy: yes });
    if (!reply) return;
    results.clear();
    jobs.clearFinished();
    dialog.close();
    toast(`Session cleared (${reply.deleted_items} deleted).`, "ok");
  });
  document.body.append(dialog);
  dialog.showModal();
  no.focus();
}
