// The library: the user's kept images and videos in a grid, filtered by type
// and date, paged with "Load more", each opening in a viewer dialog where it can
// be renamed, downloaded or deleted.
import { api } from "../api.js";
import { attempt, field, formatTime, h, mount, showError, showFieldErrors, toast } from "../ui.js";

const PAGE_SIZE = 24;
const DAY_MS = 24 * 3600 * 1000;
// The date filter's presets: how far back each one reaches.
const RANGES = { day: DAY_MS, week: 7 * DAY_MS, month: 30 * DAY_MS };

export function render(main) {
  const state = { items: [], next: "", loading: null };
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
    mount(grid, state.items.map((asset) => card(asset, () => openViewer(asset, viewerActions))));
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

  const viewerActions = {
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
  return h("li", { class: "library-card card" },
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

/** The viewer: the media large (a video plays with controls), details, rename, download, delete. */
function openViewer(asset, actions) {
  document.querySelector("dialog.viewer")?.remove();
  const opener = document.activeElement;
  const media = isVideo(asset)
    ? h("video", { src: asset.url, poster: asset.thumbnail_url, controls: true, loop: true, playsinline: true,
      "aria-label": asset.title || "Video" })
    : h("img", { src: asset.url, alt: asset.title || asset.prompt || "Image" });
  const title = h("input", { name: "title", value: asset.title, maxlength: 200, required: true });
  const saveTitle = h("button", { type: "submit" }, "Rename");
  const rename = h("form", { class: "row viewer-rename" }, field("Title", title), saveTitle);
  const download = h("a", { class: "button", href: asset.url, download: fileName(asset) }, "Download");
  const remove = h("button", { type: "button", class: "danger" }, "Delete");
  const close = h("button", { type: "button", class: "viewer-close", "aria-label": "Close viewer" }, "×");
  const heading = h("h2", { id: "viewer-title" }, asset.title || "Untitled");
  const confirmBox = h("div", { class: "viewer-confirm", role: "alertdialog", hidden: true });
  const dialog = h("dialog", { class: "viewer", "aria-labelledby": "viewer-title" },
    h("div", { class: "viewer-head" }, heading, close),
    h("div", { class: "viewer-media" }, media),
    h("div", { class: "viewer-side" },
      h("p", { class: "viewer-prompt" }, asset.prompt),
      h("dl", { class: "viewer-meta" },
        h("dt", {}, "Size"), h("dd", {}, `${asset.width}×${asset.height}`),
        h("dt", {}, "Seed"), h("dd", {}, String(asset.seed)),
        h("dt", {}, "Job type"), h("dd", {}, asset.job_type),
        ...(asset.original_prompt && asset.original_prompt !== asset.prompt
          ? [h("dt", {}, "Typed prompt"), h("dd", {}, asset.original_prompt)] : []),
        ...(asset.negative_prompt
          ? [h("dt", {}, "Negative prompt"), h("dd", {}, asset.negative_prompt)] : []),
        h("dt", {}, "Created"), h("dd", {}, formatTime(asset.created_at))),
      rename,
      h("div", { class: "row" }, download, remove),
      confirmBox),
  );

  rename.addEventListener("submit", async (event) => {
    event.preventDefault();
    showFieldErrors(rename, null);
    const value = title.value.trim();
    if (!value) {
      showFieldErrors(rename, { fields: { title: "Enter a title." } });
      title.focus();
      return;
    }
    const updated = await attempt(() => api.patch(`/v1/library/assets/${asset.id}`, { title: value }), {
      busy: saveTitle,
      form: rename,
    });
    if (!updated) return;
    Object.assign(asset, updated);
    heading.textContent = updated.title;
    download.download = fileName(updated);
    actions.renamed(updated);
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
      const done = await attempt(() => api.del(`/v1/library/assets/${asset.id}`).then(() => true), { busy: yes });
      if (!done) return;
      dialog.close();
      actions.deleted(asset);
      toast("Deleted.", "ok");
    });
    no.focus();
  });

  close.addEventListener("click", () => dialog.close());
  // A click on the backdrop (the dialog element itself, outside its content) closes it.
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  dialog.addEventListener("close", () => {
    if (media.pause) media.pause();
    dialog.remove();
    if (opener && document.contains(opener)) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
  return dialog;
}
