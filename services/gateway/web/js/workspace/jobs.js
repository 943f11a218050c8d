// Job cards: one per job of this session (and, after a reload, of the user's
// recent jobs, finished ones too), live from SSE. The session stream
// brings every job's state and progress; a job's own stream (opened for a few
// jobs at a time: a browser keeps only ~6 connections per host) also brings
// preview images and the finished job with its error.
import { api, stream } from "../api.js";
import { attempt, h } from "../ui.js";
import { typeLabel } from "./form.js";

export const ACTIVE = new Set(["queued", "enhancing", "running"]);
const STATE_TEXT = {
  queued: "Queued",
  enhancing: "Enhancing the prompt",
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
};
const MAX_JOB_STREAMS = 3;
// How often a queued card asks where its job stands in line.
const LINE_POLL_MS = 3000;
// How often active cards' elapsed times move on.
const TICK_MS = 1000;

/** "12 s", "3 min 5 s": a number of seconds, short. */
export function secondsText(s) {
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

/** Whole seconds from the server time `since` to now, never below 0.
 *
 * Elapsed times are read from the browser's clock against the server's
 * timestamps (Date.now() - Date.parse(since)): the studio is served by the same
 * gateway whose clock stamps the jobs, and clocks kept by NTP agree to well under
 * a second. Clamping at 0 keeps a browser clock that runs behind from showing a
 * negative or "-1 s" time; one that runs ahead shows a few seconds more. */
export function elapsedSeconds(since, now = Date.now()) {
  const t = Date.parse(since);
  return Number.isNaN(t) ? 0 : Math.max(0, Math.round((now - t) / 1000));
}

/** "12 s", "3 min 5 s": how long a job ran (started to finished), or "" while unknown. */
export function durationText(job) {
  if (!job.started_at || !job.completed_at) return "";
  return secondsText(elapsedSeconds(job.started_at, Date.parse(job.completed_at)));
}

/** "#3 in line · starts in ~12 s": a queued job's place, from its `queue`. */
export function lineText(line, now = Date.now()) {
  if (!line) return "";
  const place = line.dispatched || line.position === 0 ? "next in line" : `#${line.position + 1} in line`;
  if (!line.estimated_start_at) return place;
  const seconds = Math.round((Date.parse(line.estimated_start_at) - now) / 1000);
  if (seconds <= 1) return `${place} · starting`;
  const wait = seconds < 90 ? `~${seconds} s` : `~${Math.round(seconds / 60)} min`;
  return `${place} · starts in ${wait}`;
}

/** The form settings a job was made with (form.apply takes them); a new seed. */
export function jobSettings(job) {
  return {
    job_type: job.job_type,
    prompt: job.prompt,
    negative_prompt: job.negative_prompt || "",
    width: job.width,
    height: job.height,
    num_images: job.num_images,
    num_frames: job.num_frames,
    lock_seed: false,
    seed: null,
  };
}

/** A POST /v1/jobs body that submits a job's settings again as a new job
 * (a new seed; the same reference and destination). `t`: its job type. */
export function retryBody(job, t) {
  const body = { job_type: job.job_type, prompt: job.prompt, width: job.width, height: job.height };
  if (t?.allowed_num_images.length > 1) body.num_images = job.num_images;
  if (t?.worker === "sdxl" && job.negative_prompt) body.negative_prompt = job.negative_prompt;
  if (t?.output === "video") body.num_frames = job.num_frames;
  if (job.reference_image_id) {
    Object.assign(body, {
      reference_image_id: job.reference_image_id,
      reference_type: job.reference_type,
      reference_strength: job.reference_strength,
    });
  }
  if (job.destination === "library") body.destination = "library";
  return body;
}

/** Job cards. `onRetry(job)`: a failed or cancelled card's Retry button;
 * `onDismiss(ids)`: finished cards taken away (Dismiss, clearFinished). */
export function createJobList({ types, signal, onRetry, onDismiss }) {
  const byName = Object.fromEntries(types.map((t) => [t.name, t]));
  const cards = new Map(); // job id -> card
  const list = h("ol", { class: "ws-jobs", "aria-label": "Jobs" });
  let streams = 0;

  function card(job) {
    const badge = h("span", { class: "badge" });
    const bar = h("progress", { max: 1, value: 0, "aria-label": "Progress" });
    const stage = h("span", { class: "ws-stage muted" });
    const preview = h("img", { class: "ws-preview", alt: "Preview of the image being generated", hidden: true });
    const error = h("p", { class: "ws-job-error", role: "alert", hidden: true });
    const cancel = h("button", { type: "button", class: "danger" }, "Cancel");
    const retry = h("button", { type: "button", hidden: true }, "Retry");
    const dismiss = h("button", { type: "button", class: "link", hidden: true }, "Dismiss");
    const t = byName[job.job_type];
    const size = `${job.width}×${job.height}${job.num_frames > 1 ? `, ${job.num_frames} frames` : ""}`;
    const el = h("li", { class: "ws-job card", "aria-label": `Job: ${job.prompt}` },
      h("div", { class: "ws-job-head" }, badge, h("span", { class: "ws-job-type" }, t ? typeLabel(t) : job.job_type)),
      h("p", { class: "ws-job-prompt" }, job.prompt),
      h("p", { class: "hint" }, `${size}${job.num_images > 1 ? ` · ${job.num_images} images` : ""}`),
      h("div", { class: "ws-progress" }, bar, stage),
      preview,
      error,
      h("div", { class: "row" }, cancel, retry, dismiss),
    );
    // `note`: what a running or finished card's stage line says beside its time ("step 5 of 15");
    // `runningSince`: this page's time when the card saw the job running, until the
    // job itself says when it started.
    const c = { job, el, badge, bar, stage, preview, error, cancel, retry, dismiss, state: null, watching: false,
                note: "", runningSince: null };
    cancel.addEventListener("click", () => cancelJob(c));
    retry.addEventListener("click", () => attempt(() => onRetry(c.job), { busy: retry }));
    dismiss.addEventListener("click", () => {
      const next = el.nextElementSibling || el.previousElementSibling;
      el.remove();
      cards.delete(job.id);
      onDismiss?.([job.id]);
      next?.querySelector("button")?.focus();
    });
    return c;
  }

  async function cancelJob(c) {
    const job = await attempt(() => api.post(`/v1/jobs/${c.job.id}/cancel`), { busy: c.cancel });
    if (job) apply(c, { state: job.state, job });
  }

  /** Apply an event (or a fetched job) to its card. */
  function apply(c, data) {
    if (data.job) c.job = data.job;
    if (c.job.state === "failed") showError(c);
    const state = data.state || c.job.state;
    // A finished card stays as it is: the two streams' late events change nothing.
    if (c.state && !ACTIVE.has(c.state)) {
      if (data.job) showStage(c);
      return;
    }
    if (data.step !== undefined && data.total) {
      c.bar.max = data.total;
      c.bar.value = Math.max(Number(c.bar.value) || 0, data.step);
      c.bar.setAttribute("aria-valuetext", `step ${c.bar.value} of ${data.total}`);
      c.note = `${data.stage ? `${data.stage} · ` : ""}step ${c.bar.value} of ${data.total}`;
    }
    if (data.preview) {
      c.preview.src = data.preview;
      c.preview.hidden = false;
    }
    setState(c, state, Boolean(data.job));
    showStage(c);
  }

  /** The stage line: what the job is doing and for how long. A queued card: its
   * place in line and how long it has waited; a running one: its step and how
   * long it has run; a completed one: how long it took. Not a live region: it
   * changes every second, and the badge and progress bar say what matters. */
  function showStage(c) {
    let parts = [c.note];
    if (c.state === "queued") {
      parts = [c.job.queue ? lineText(c.job.queue) : "", `waiting ${secondsText(elapsedSeconds(c.job.created_at))}`];
    } else if (c.state === "enhancing") {
      parts.push(secondsText(elapsedSeconds(c.job.created_at)));
    } else if (c.state === "running") {
      parts.push(secondsText(elapsedSeconds(c.job.started_at || c.runningSince)));
    } else if (c.state === "completed") {
      const took = durationText(c.job);
      parts = [took ? `Done in ${took}` : "Done"];
    }
    const text = parts.filter(Boolean).join(" · ");
    if (c.stage.textContent !== text) c.stage.textContent = text;
  }

  // One timer moves every active card's time on; it runs only while a card is active.
  let ticker = null;
  function tick() {
    const active = [...cards.values()].filter((c) => ACTIVE.has(c.state));
    for (const c of active) showStage(c);
    if (!active.length) stopTicking();
  }
  function startTicking() {
    if (!ticker && !signal.aborted) ticker = setInterval(tick, TICK_MS);
  }
  function stopTicking() {
    clearInterval(ticker);
    ticker = null;
  }
  signal.addEventListener("abort", stopTicking);

  /** Queued cards ask where their job stands, every few seconds. */
  async function pollLine() {
    const queued = [...cards.values()].filter((c) => c.state === "queued").slice(0, 5);
    for (const c of queued) {
      try {
        const job = await api.get(`/v1/jobs/${c.job.id}`, { signal });
        if (c.state === "queued") apply(c, { job });
      } catch {
        /* the streams still bring its state */
      }
    }
  }
  const linePoll = setInterval(() => { if (!signal.aborted) pollLine(); }, LINE_POLL_MS);
  signal.addEventListener("abort", () => clearInterval(linePoll));

  function showError(c) {
    c.error.textContent = `Failed: ${c.job.error?.message || "the job could not be completed."}`;
    c.error.hidden = false;
  }

  function setState(c, state, hasJob) {
    if (!state || state === c.state) return;
    // A card shown already finished (on a reload) reports no finish.
    const seen = c.state !== null;
    c.state = state;
    c.el.dataset.state = state;
    c.badge.className = `badge ${state}`;
    c.badge.textContent = STATE_TEXT[state] || state;
    const active = ACTIVE.has(state);
    if (state === "running" && !c.runningSince) c.runningSince = new Date().toISOString();
    if (active) startTicking();
    c.cancel.hidden = !active;
    c.dismiss.hidden = active;
    c.retry.hidden = !onRetry || !(state === "failed" || state === "cancelled");
    if (state === "completed") {
      c.bar.value = c.bar.max;
      c.preview.hidden = true;
    }
    if (state === "failed") showError(c);
    if (state === "cancelled") c.note = "Cancelled";
    // The session stream's events do not carry the job: fetch it for its error.
    if (!active && !hasJob && c.job.state !== state) refresh(c);
    if (!active && seen) onFinished?.(c.job, state);
  }

  /** A terminal state seen on the session stream: fetch the job for its error. */
  async function refresh(c) {
    try {
      const job = await api.get(`/v1/jobs/${c.job.id}`, { signal });
      c.job = job;
      if (job.state === "failed") showError(c);
      showStage(c);
    } catch {
      /* the card keeps what it has */
    }
  }

  async function watch(c) {
    if (streams >= MAX_JOB_STREAMS || c.watching) return;
    streams++;
    c.watching = true;
    try {
      await stream(`/v1/jobs/${c.job.id}/events`, (name, data) => {
        if (name === "error") return;
        apply(c, data);
      }, { signal });
    } catch {
      /* the session stream still carries this job's state */
    } finally {
      streams--;
      c.watching = false;
      // Hand the free stream to a job still waiting for one.
      const waiting = [...cards.values()].find((x) => ACTIVE.has(x.state) && !x.watching);
      if (waiting && !signal.aborted) watch(waiting);
    }
  }

  let onFinished = null;

  return {
    el: list,
    /** A job to show (new, or found on reload): its card, at the top. */
    add(job) {
      if (cards.has(job.id)) return cards.get(job.id);
      const c = card(job);
      cards.set(job.id, c);
      list.prepend(c.el);
      apply(c, { state: job.state, step: job.progress?.step, total: job.progress?.total, stage: job.progress?.stage });
      if (ACTIVE.has(job.state)) watch(c);
      return c;
    },
    /** An event from the session stream. */
    event(data) {
      const c = cards.get(data.job_id);
      if (c) apply(c, data);
      return Boolean(c);
    },
    onFinished(fn) {
      onFinished = fn;
    },
    clearFinished() {
      const gone = [];
      for (const [id, c] of cards) {
        if (!ACTIVE.has(c.state)) {
          c.el.remove();
          cards.delete(id);
          gone.push(id);
        }
      }
      if (gone.length) onDismiss?.(gone);
    },
  };
}
