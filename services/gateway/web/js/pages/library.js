// The library: the user's kept images and videos in a grid, filtered by type
// and date, paged with "Load more", each opening in a viewer dialog (Previous /
// Next across the list) that shows its settings and provenance, and where it
// can be renamed, downloaded, deleted or opened in the workspace to remix.
import { api } from "../api.js";
import { attempt, field, formatTime, h, mount, showDialog, showError, showFieldErrors, toast } from "../ui.js";
import { typeLabel } from "../workspace/form.js";
import { REUSE_KEY } from "./workspace.js";

const PAGE_SIZE = 24;
const DAY_MS = 24 * 3600 * 1000;
// The date filter's presets: how far back each one reaches.
const RANGES = { day: DAY_MS, week: 7 * DAY_MS, month: 30 * DAY_MS };

export function render(main, { navigate }) {
  const state = { items: [], next: "", loading: null, types: {} };
  // Job types' names for people, from the catalogue (the viewer shows them).
  api.get("/v1/job-types").then(
    (catalog) => (state.types = Object.fromEntries(catalog.items.map((t) => [t.name, t]))),
    () => {},
  );
  const type = h("select", { name: "media_type" },
    h("option", { value: "" }, "Images and videos"),
    h("option", { value: "image" }, "Images"),
    h("option", { value: "video" }, "Videos"),
  );
  const date = h("select", { name: "date" },
    h("option", { value: "" }, "Any time"),
    h("option", { value: "day" }, "Last 24 hours"),
    h("option", { value: "week" }, "Last 7 days"),
    h("option", { value: "month" }, "Last 30 days"),
    h("option", { value: "custom" }, "Between dates…"),
  );
  const from = h("input", { type: "date", name: "created_after" });
  const until = h("input", { type: "date", name: "created_before" });
  const custom = h("div", { class: "row library-dates", hidden: true },
    field("From", from), field("Until (inclusive)", until));
  const filters = h("form", { class: "card library-filters", "aria-label": "Filters" },
    h("div", { class: "row" }, field("Type", type), field("Date", date)), custom);
  const status = h("p", { class: "muted library-status", role: "status", "aria-live": "polite" });
  const grid = h("ul", { class: "grid library-grid", "aria-label": "Library items" });
  const more = h("button", { type: "button", hidden: true }, "Load more");

  /** The query of the current filters, or null with a message when they make no sense. */
  function query() {
    const params = new URLSearchParams({ page_size: String(PAGE_SIZE) });
    if (type.value) params.set("media_type", type.value);
    if (RANGES[date.value]) {
      params.set("created_after", new Date(Date.now() - RANGES[date.value]).toISOString());
    } else if (date.value === "custom") {
      // Local calendar days: "until" includes the whole of its day.
      if (from.value) params.set("created_after", localDay(from.value).toISOString());
      if (until.value) params.set("created_before", new Date(localDay(until.value).getTime() + DAY_MS).toISOString());
    }
    return params;
  }

  async function load(reset) {
    const params = query();
    if (!reset) params.set("page_token", state.next);
    // A newer load (filters changed) wins over one still under way.
    const ticket = {};
    state.loading = ticket;
    more.disabled = true;
    if (reset) status.textContent = "Loading…";
    try {
      const page = await api.get(`/v1/library/assets?${params}`);
      if (state.loading !== ticket) return;
      state.items = reset ? page.items : state.items.concat(page.items);
      state.next = page.next_page_token || "";
      draw();
    } catch (err) {
      if (state.loading !== ticket) return;
      status.textContent = "The library could not be loaded.";
      showError(err, filters);
    } finally {
      if (state.loading === ticket) more.disabled = false;
    }
  }

  function draw() {
    const filtered = type.value || date.value;
    mount(grid, state.items.map((asset) => card(asset, () => openViewer(asset, viewer))));
    if (!state.items.length) {
      status.textContent = filtered
        ? "Nothing matches these filters."
        : "Your library is empty. Save results from the workspace to keep them here.";
    } else {
      const n = state.items.length;
      status.textContent = `${n} item${n === 1 ? "" : "s"}${state.next ? " shown" : ""}`;
    }
    more.hidden = !state.next;
  }

  const viewer = {
    items: () => state.items,
    types: () => state.types,
    navigate,
    cardOf: (asset) => grid.querySelector(`li[data-asset-id="${CSS.escape(asset.id)}"] .library-open`),
    actions: {},
  };
  viewer.actions = {
    renamed(asset) {
      state.items = state.items.map((a) => (a.id === asset.id ? asset : a));
      draw();
    },
    deleted(asset) {
      state.items = state.items.filter((a) => a.id !== asset.id);
      draw();
      grid.querySelector("button")?.focus();
      if (!grid.querySelector("button")) main.focus();
    },
  };

  function refilter() {
    custom.hidden = date.value !== "custom";
    showFieldErrors(filters, null);
    load(true);
  }
  type.addEventListener("change", refilter);
  date.addEventListener("change", refilter);
  from.addEventListener("change", refilter);
  until.addEventListener("change", refilter);
  filters.addEventListener("submit", (e) => e.preventDefault());
  more.addEventListener("click", () => load(false));

  mount(main, h("div", { class: "library" }, h("h1", {}, "Library"), filters, status, grid,
    h("div", { class: "library-more" }, more)));
  load(true);
  return () => {
    state.loading = null;
    document.querySelector("dialog.viewer")?.remove();
  };
}

/** "2024-05-01" as midnight local time (Date parses bare dates as UTC). */
function localDay(value) {
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d);
}

const isVideo = (asset) => asset.content_type.startsWith("video/");

function card(asset, open) {
  const label = `${asset.title || "Untitled"} (${isVideo(asset) ? "video" : "image"})`;
  const src = asset.thumbnail_url || (isVideo(asset) ? null : asset.url);
  return h("li", { class: "library-card card", dataset: { assetId: asset.id } },
    h("button", { type: "button", class: "library-open", "aria-label": `Open ${label}`, onclick: open },
      src ? h("img", { class: "thumb", src, alt: "", loading: "lazy" }) : h("div", { class: "thumb" }),
      isVideo(asset) ? h("span", { class: "badge library-kind" }, "Video") : null),
    h("p", { class: "library-title" }, asset.title || "Untitled"),
    h("p", { class: "muted library-date" }, formatTime(asset.created_at)),
  );
}

/** A file name for the download: the title made safe, with the media's extension. */
function fileName(asset) {
  const base = (asset.title || "ourvidz").replace(/[^\p{L}\p{N}._ -]+/gu, "").trim().slice(0, 80) || "ourvidz";
  return `${base}.${isVideo(asset) ? "mp4" : "png"}`;
}

/** `value` as a job type's name for people: from the catalogue, or the name in words. */
function typeName(types, value) {
  return types[value] ? typeLabel(types[value]) : String(value).replace(/_/g, " ");
}

/** [term, value] rows as <dt>/<dd> pairs, leaving out empty values. */
function rows(pairs) {
  return pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([term, v]) => [h("dt", {}, term), v instanceof Node ? h("dd", {}, v) : h("dd", {}, String(v))]);
}

/** The settings the job ran with, and (folded) what rendered it. */
function jobDetails(job) {
  const p = job.provenance;
  const settings = h("dl", { class: "viewer-meta" }, ...rows([
    ["Steps", p?.steps ?? job.steps],
    ["Guidance", p?.guidance_scale ?? job.guidance_scale],
    ["Model", p?.preset],
    ["Scheduler", p?.scheduler],
    ["Frames", job.num_frames > 1 ? job.num_frames : null],
    ["Reference", job.reference_type ? `${job.reference_type}, strength ${job.reference_strength}` : null],
    ["img2img strength", p?.img2img_strength],
  ]));
  const provenance = p
    ? h("details", { class: "viewer-provenance" },
      h("summary", {}, "Provenance"),
      h("dl", { class: "viewer-meta" }, ...rows([
        ["Weights", h("code", { title: p.weights_digest }, p.weights_digest.slice(0, 12))],
        ["Precision", `${p.dtype} on ${p.device}`],
        ["Worker", p.worker_id],
        ["Versions", `ourvidz ${p.ourvidz_version}, torch ${p.torch_version}, diffusers ${p.diffusers_version}, transformers ${p.transformers_version}`],
        ["Rendered prompt", job.enhanced_prompt || job.prompt],
        ["Original prompt", job.prompt],
        ["Enhancement", job.enhancement_template_id ? `template ${job.enhancement_template_id.slice(0, 8)} v${job.enhancement_template_version}` : null],
      ])))
    : null;
  return [settings, provenance];
}

/**
 * The viewer: the media large (a video plays with controls), its settings and
 * provenance, rename, download, delete, "Open in workspace", and Previous/Next
 * (← / →) across `ctx.items()` (the library as listed). Closing focuses the
 * card of the item last shown.
 */
function openViewer(start, ctx) {
  document.querySelector("dialog.viewer")?.remove();
  const jobs = new Map(); // job id -> job, fetched once
  let asset = start;
  let leaving = false;
  const close = h("button", { type: "button", class: "viewer-close", "aria-label": "Close viewer" }, "×");
  const prev = h("button", { type: "button" }, h("span", { "aria-hidden": "true" }, "← "), "Previous");
  const next = h("button", { type: "button" }, "Next", h("span", { "aria-hidden": "true" }, " →"));
  const position = h("span", { class: "muted viewer-position" });
  const heading = h("h2", { id: "viewer-title" });
  const frame = h("div", { class: "viewer-media" });
  const side = h("div", { class: "viewer-side" });
  const dialog = h("dialog", { class: "viewer", "aria-labelledby": "viewer-title" },
    h("div", { class: "viewer-head" }, heading,
      h("div", { class: "row viewer-nav" }, prev, position, next, close)),
    frame,
    side,
  );

  const index = () => ctx.items().findIndex((a) => a.id === asset.id);

  function show(target) {
    for (const v of frame.querySelectorAll("video")) v.pause();
    asset = target;
    heading.textContent = asset.title || "Untitled";
    mount(frame, isVideo(asset)
      ? h("video", { src: asset.url, poster: asset.thumbnail_url, controls: true, loop: true, playsinline: true,
        "aria-label": asset.title || "Video" })
      : h("img", { src: asset.url, alt: asset.title || asset.prompt || "Image" }));
    mount(side, ...sideFor(asset));
    const i = index();
    const n = ctx.items().length;
    position.textContent = i >= 0 ? `${i + 1} of ${n}` : "";
    const focused = document.activeElement;
    prev.disabled = i <= 0;
    next.disabled = i < 0 || i >= n - 1;
    if (focused?.disabled) [prev, next, close].find((b) => !b.disabled).focus();
  }

  /** Move by `step` across the list (−1 back, +1 on), when there is an item there. */
  function step(by) {
    const target = ctx.items()[index() + by];
    if (index() >= 0 && target) show(target);
  }

  function sideFor(shown) {
    const title = h("input", { name: "title", value: shown.title, maxlength: 200, required: true });
    const saveTitle = h("button", { type: "submit" }, "Rename");
    const rename = h("form", { class: "row viewer-rename" }, field("Title", title), saveTitle);
    const download = h("a", { class: "button", href: shown.url, download: fileName(shown) }, "Download");
    const remove = h("button", { type: "button", class: "danger" }, "Delete");
    const reuse = h("button", { type: "button", class: "primary" }, "Open in workspace");
    const confirmBox = h("div", { class: "viewer-confirm", role: "alertdialog", hidden: true });
    const settings = h("div", { class: "viewer-settings" }, h("p", { class: "muted" }, "Loading the settings…"));

    loadJob(shown).then((job) => {
      if (asset !== shown) return;
      mount(settings, job ? jobDetails(job) : h("p", { class: "muted" }, "The settings of this item's job could not be loaded."));
    });

    rename.addEventListener("submit", async (event) => {
      event.preventDefault();
      showFieldErrors(rename, null);
      const value = title.value.trim();
      if (!value) {
        showFieldErrors(rename, { fields: { title: "Enter a title." } });
        title.focus();
        return;
      }
      const updated = await attempt(() => api.patch(`/v1/library/assets/${shown.id}`, { title: value }), {
        busy: saveTitle,
        form: rename,
      });
      if (!updated) return;
      Object.assign(shown, updated);
      if (asset === shown) heading.textContent = updated.title;
      download.download = fileName(updated);
      ctx.actions.renamed(updated);
      toast("Renamed.", "ok");
    });

    remove.addEventListener("click", () => {
      const yes = h("button", { type: "button", class: "danger" }, "Delete for good");
      const no = h("button", { type: "button" }, "Keep it");
      mount(confirmBox, h("p", { id: "viewer-confirm-text" }, "Delete this item from your library? This cannot be undone."),
        h("div", { class: "row" }, yes, no));
      confirmBox.setAttribute("aria-labelledby", "viewer-confirm-text");
      confirmBox.hidden = false;
      no.addEventListener("click", () => {
        confirmBox.hidden = true;
        remove.focus();
      });
      yes.addEventListener("click", async () => {
        const done = await attempt(() => api.del(`/v1/library/assets/${shown.id}`).then(() => true), { busy: yes });
        if (!done) return;
        leaving = true;
        dialog.close();
        ctx.actions.deleted(shown);
        toast("Deleted.", "ok");
      });
      no.focus();
    });

    // The workspace reads these settings once, on load, into its form.
    reuse.addEventListener("click", async () => {
      const job = await loadJob(shown);
      const settings = {
        job_type: shown.job_type,
        prompt: job?.prompt || shown.original_prompt || shown.prompt,
        width: shown.width,
        height: shown.height,
        // The asset's own seed, kept: the same picture again, to change from there.
        lock_seed: Number.isInteger(shown.seed),
        seed: shown.seed,
      };
      if (job?.negative_prompt) settings.negative_prompt = job.negative_prompt;
      if (job?.num_frames > 1) settings.num_frames = job.num_frames;
      sessionStorage.setItem(REUSE_KEY, JSON.stringify(settings));
      leaving = true;
      dialog.close();
      ctx.navigate("#/workspace");
    });

    const typed = shown.original_prompt && shown.original_prompt !== shown.prompt ? shown.original_prompt : null;
    return [
      h("p", { class: "viewer-prompt" }, shown.prompt),
      h("dl", { class: "viewer-meta" }, ...rows([
        ["Type", typeName(ctx.types(), shown.job_type)],
        ["Size", `${shown.width}×${shown.height}`],
        ["Seed", shown.seed],
        ["Typed prompt", typed],
        ["Created", formatTime(shown.created_at)],
      ])),
      shown.negative_prompt
        ? h("details", { class: "viewer-folded" }, h("summary", {}, "Negative prompt"), h("p", {}, shown.negative_prompt))
        : null,
      settings,
      rename,
      h("div", { class: "row" }, reuse, download, remove),
      confirmBox,
    ];
  }

  /** The asset's job (its settings and provenance), or null when it cannot be had. */
  async function loadJob(shown) {
    if (!jobs.has(shown.job_id)) {
      jobs.set(shown.job_id, api.get(`/v1/jobs/${shown.job_id}`).catch(() => null));
    }
    return jobs.get(shown.job_id);
  }

  prev.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  dialog.addEventListener("keydown", (event) => {
    // Arrow keys in a text field or on a video keep their own meaning.
    if (event.target.closest?.("input, textarea, select, video")) return;
    if (event.key === "ArrowLeft") step(-1);
    else if (event.key === "ArrowRight") step(1);
    else return;
    event.preventDefault();
  });
  showDialog(dialog, {
    close,
    onClosed: () => {
      if (!leaving) ctx.cardOf(asset)?.focus();
    },
  });
  show(start);
  close.focus();
  return dialog;
}
