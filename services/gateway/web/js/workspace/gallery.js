// Results seen large: the lightbox (one result at a time, with Previous/Next
// and ← / → across the session's results) and the comparison of two results
// side by side. Both are modal <dialog>s: Escape closes them and focus goes
// back to the result's tile.
import { api } from "../api.js";
import { h, mount, showDialog } from "../ui.js";

const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4", "video/webm": "webm" };

const isVideo = (item) => item.content_type.startsWith("video/");

/** "a-red-fox-in-snow-seed-42.png": the prompt's first words, the seed, the media's extension. */
export function downloadName(item) {
  const words = (item.original_prompt || item.prompt || "ourvidz")
    .toLowerCase()
    .replace(/[^\p{L}\p{N}]+/gu, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 60)
    .replace(/-+$/, "");
  const ext = EXTENSIONS[item.content_type] || item.content_type.split("/")[1] || "bin";
  return `${words || "ourvidz"}-seed-${item.seed}.${ext}`;
}

/** The media large: a video plays with its controls. */
function media(item) {
  const alt = `${item.prompt} (seed ${item.seed})`;
  return isVideo(item)
    ? h("video", { src: item.url, poster: item.thumbnail_url || null, controls: true, loop: true, muted: true,
      playsInline: true, "aria-label": alt })
    : h("img", { src: item.url, alt, width: item.width, height: item.height });
}

/** A compact definition list of [term, value] rows; empty values are left out. */
function details(rows, className = "gallery-meta") {
  return h("dl", { class: className },
    rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, String(value))]));
}

/** A long text (the negative prompt) folded away under its name; nothing when empty. */
function folded(label, text) {
  return text ? h("details", { class: "gallery-folded" }, h("summary", {}, label), h("p", {}, text)) : null;
}

/** A modal dialog with a heading and a close button; closing removes it and focuses `returnFocus()`. */
function modal(className, returnFocus) {
  const heading = h("h2", { id: `${className}-title` });
  const close = h("button", { type: "button", class: "gallery-close", "aria-label": "Close" }, "×");
  const body = h("div", { class: "gallery-body" });
  const dialog = h("dialog", { class: `gallery ${className}`, "aria-labelledby": heading.id },
    h("div", { class: "gallery-head" }, heading, close), body);
  document.querySelector("dialog.gallery")?.remove();
  showDialog(dialog, { close, onClosed: () => returnFocus()?.focus() });
  return { dialog, heading, body, close };
}

/**
 * The lightbox over `items` (the session's results, in the grid's order),
 * starting at `index`. `typeName(job_type)` names a job type for people;
 * `focusTile(item)` gives the element to focus when it closes (the tile of
 * the result last shown).
 */
export function openLightbox(items, index, { typeName, focusTile }) {
  let at = index;
  const { dialog, heading, body, close } = modal("lightbox", () => focusTile(items[at]));
  const prev = h("button", { type: "button", class: "gallery-prev" }, h("span", { "aria-hidden": "true" }, "← "), "Previous");
  const next = h("button", { type: "button", class: "gallery-next" }, "Next", h("span", { "aria-hidden": "true" }, " →"));
  const download = h("a", { class: "button gallery-download" }, "Download");
  const frame = h("div", { class: "gallery-media" });
  const info = h("div", { class: "gallery-info" });
  const position = h("span", { class: "muted gallery-position", "aria-live": "polite" });
  mount(body, frame, h("div", { class: "gallery-side" }, info,
    h("div", { class: "row gallery-nav" }, prev, position, next),
    h("div", { class: "row" }, download)));

  function show(i) {
    for (const v of frame.querySelectorAll("video")) v.pause();
    at = Math.max(0, Math.min(items.length - 1, i));
    const item = items[at];
    heading.textContent = isVideo(item) ? "Video" : "Image";
    mount(frame, media(item));
    const typed = item.original_prompt && item.original_prompt !== item.prompt ? item.original_prompt : null;
    mount(info,
      h("p", { class: "gallery-prompt" }, item.prompt),
      details([
        ["Type", typeName(item.job_type)],
        ["Size", `${item.width}×${item.height}`],
        ["Seed", item.seed],
        ["Typed prompt", typed],
      ]),
      folded("Negative prompt", item.negative_prompt));
    position.textContent = `${at + 1} of ${items.length}`;
    // A file whose link has run out (no URL) has nothing to download.
    download.hidden = !item.url;
    if (item.url) {
      download.href = item.url;
      download.download = downloadName(item);
    }
    // At either end the button that cannot go further is disabled; focus on it moves to the other one.
    const focused = document.activeElement;
    prev.disabled = at === 0;
    next.disabled = at === items.length - 1;
    if (focused?.disabled) [prev, next, close].find((b) => !b.disabled).focus();
  }

  prev.addEventListener("click", () => show(at - 1));
  next.addEventListener("click", () => show(at + 1));
  dialog.addEventListener("keydown", (event) => {
    // A focused video seeks with the arrow keys itself.
    if (event.target.closest?.("video, input, select, textarea")) return;
    if (event.key === "ArrowLeft" && at > 0) show(at - 1);
    else if (event.key === "ArrowRight" && at < items.length - 1) show(at + 1);
    else return;
    event.preventDefault();
  });
  show(at);
  close.focus();
  return dialog;
}

/** Two results side by side, each with its prompt and the settings of its job. */
export function openCompare(pair, { typeName, returnFocus }) {
  const { heading, body } = modal("compare", returnFocus);
  heading.textContent = "Compare results";
  mount(body, h("div", { class: "compare-grid" }, pair.map((item, i) => {
    const settings = h("div", { class: "compare-settings" }, h("p", { class: "muted" }, "Loading the settings…"));
    const figure = h("figure", { class: "compare-item", "aria-label": `Result ${i + 1}: ${item.prompt}` },
      h("div", { class: "gallery-media" }, media(item)),
      h("figcaption", {},
        h("p", { class: "gallery-prompt" }, item.prompt),
        details([
          ["Type", typeName(item.job_type)],
          ["Size", `${item.width}×${item.height}`],
          ["Seed", item.seed],
        ]),
        settings));
    api.get(`/v1/jobs/${item.job_id}`).then(
      (job) => mount(settings, details([
        ["Steps", job.provenance?.steps ?? job.steps],
        ["Guidance", job.provenance?.guidance_scale ?? job.guidance_scale],
        ["Model", job.provenance?.preset],
        ["Typed prompt", job.prompt !== item.prompt ? job.prompt : null],
        ["Reference", job.reference_type ? `${job.reference_type}, strength ${job.reference_strength}` : null],
      ]), folded("Negative prompt", item.negative_prompt)),
      () => mount(settings, h("p", { class: "muted" }, "The settings could not be loaded.")),
    );
    return figure;
  })));
}
