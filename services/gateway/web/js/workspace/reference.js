// The reference image of an SDXL job: uploaded from a file (picked, dropped on
// the reference area or pasted), picked from the library, or taken from a
// workspace result. Jobs only accept uploads
// (reference_image_id), so a library or workspace image is fetched and
// uploaded again.
import { api } from "../api.js";
import { attempt, field, h, toast } from "../ui.js";

const TYPES = ["style", "composition", "character"];
// The image formats the upload takes.
const FORMATS = { "image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP" };

/** Why `file` cannot be a reference, or "" when it can. */
export function referenceProblem(file) {
  if (FORMATS[file.type]) return "";
  const name = file.name ? `“${file.name}”` : "That file";
  if (file.type.startsWith("image/")) {
    return `${name} is a ${file.type.slice(6).toUpperCase()} image; a reference must be a PNG, JPEG or WebP image.`;
  }
  return `${name} is not an image; a reference must be a PNG, JPEG or WebP image.`;
}

/** Upload an image (a File or Blob) as a reference: → {id, width, height, ...}. */
export async function uploadImage(file, name = "reference.png") {
  const data = new FormData();
  data.append("file", file, file.name || name);
  return api.post("/v1/uploads", data);
}

/** Upload the image at `url` (a signed URL of a result or library asset). */
export async function uploadFromUrl(url) {
  let response;
  try {
    response = await fetch(url);
  } catch {
    throw new Error("The image could not be downloaded. Try again.");
  }
  if (!response.ok) throw new Error("The image link has expired; reload the page and try again.");
  return uploadImage(await response.blob());
}

export function referencePicker() {
  let current = null; // {id, url, label}
  const file = h("input", { type: "file", name: "reference_file", accept: Object.keys(FORMATS).join(",") });
  const pick = h("button", { type: "button" }, "Pick from library");
  const remove = h("button", { type: "button", class: "danger" }, "Remove reference");
  const preview = h("img", { class: "ws-ref-thumb", alt: "" });
  const chosen = h("div", { class: "ws-ref-chosen", hidden: true }, preview, h("div", { class: "stack" }, h("p", { class: "ws-ref-label" }), remove));
  const type = h("select", { name: "reference_type" }, TYPES.map((t) => h("option", { value: t }, t[0].toUpperCase() + t.slice(1))));
  const strength = h("input", { type: "range", name: "reference_strength", min: "0.1", max: "1", step: "0.1", value: "0.5" });
  const strengthValue = h("output", { class: "ws-ref-value" }, "0.5");
  const strengthField = field("Reference strength", strength);
  strengthField.querySelector("label").append(" ", strengthValue);
  const settings = h("div", { class: "ws-ref-settings", hidden: true }, field("Reference type", type), strengthField);
  const message = h("p", { class: "ws-ref-message", role: "alert", hidden: true });
  const el = h("fieldset", { class: "ws-ref" },
    h("legend", {}, "Reference image (optional)"),
    field("Upload a reference image", file, "PNG, JPEG or WebP. Or drop an image here, or paste one (Ctrl+V)."),
    h("div", { class: "row" }, pick),
    message,
    chosen,
    settings,
  );

  strength.addEventListener("input", () => {
    strengthValue.value = Number(strength.value).toFixed(1);
    strength.setAttribute("aria-valuetext", strengthValue.value);
  });
  /** Upload a picked, dropped or pasted file as the reference; a file that
   * cannot be one is refused with a message in the reference area. */
  async function useFile(chosenFile) {
    const problem = referenceProblem(chosenFile);
    message.textContent = problem;
    message.hidden = !problem;
    if (problem) {
      // Pasted while the area is hidden (a type without references): say it anyway.
      if (el.hidden) toast(problem, "error");
      return;
    }
    const upload = await attempt(() => uploadImage(chosenFile), { busy: pick });
    if (upload) set({ id: upload.id, url: URL.createObjectURL(chosenFile), label: chosenFile.name || "Pasted image" });
  }

  file.addEventListener("change", async () => {
    const chosenFile = file.files[0];
    if (!chosenFile) return;
    await useFile(chosenFile);
    file.value = "";
  });

  // The whole reference area takes a dropped file, highlighted while one is over it.
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  el.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    el.classList.add("ws-drop-active");
  });
  el.addEventListener("dragleave", (event) => {
    if (!el.contains(event.relatedTarget)) el.classList.remove("ws-drop-active");
  });
  el.addEventListener("drop", (event) => {
    el.classList.remove("ws-drop-active");
    const dropped = event.dataTransfer?.files?.[0];
    if (!dropped) return;
    event.preventDefault();
    useFile(dropped);
  });
  pick.addEventListener("click", () => openLibrary(pick, set));
  remove.addEventListener("click", () => {
    set(null);
    file.focus();
  });

  function set(upload) {
    if (current?.url?.startsWith("blob:")) URL.revokeObjectURL(current.url);
    current = upload;
    message.hidden = true;
    chosen.hidden = settings.hidden = !upload;
    if (!upload) return;
    preview.src = upload.url;
    preview.alt = `Reference: ${upload.label || "image"}`;
    chosen.querySelector(".ws-ref-label").textContent = upload.label || "Reference image";
  }

  return {
    el,
    set,
    useFile,
    value() {
      if (!current) return {};
      return { reference_image_id: current.id, reference_type: type.value, reference_strength: Number(strength.value) };
    },
  };
}

/** A modal list of the library's images; choosing one uploads it as the reference. */
function openLibrary(opener, set) {
  const list = h("div", { class: "ws-ref-grid" });
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const close = h("button", { type: "button" }, "Close");
  const dialog = h("dialog", { class: "ws-dialog", "aria-labelledby": "ws-lib-title" },
    h("h2", { id: "ws-lib-title" }, "Pick a reference from the library"),
    list,
    h("div", { class: "row" }, more, close),
  );
  let token = "";

  async function load() {
    const page = await attempt(() => api.get(`/v1/library/assets?media_type=image&page_size=24&page_token=${encodeURIComponent(token)}`), { busy: more });
    if (!page) return;
    for (const asset of page.items) list.append(choice(asset));
    if (!list.children.length) list.append(h("p", { class: "muted" }, "No images in your library yet. Save a result first."));
    token = page.next_page_token;
    more.hidden = !token;
  }

  function choice(asset) {
    const label = asset.title || asset.prompt || "Library image";
    const button = h("button", { type: "button", class: "ws-ref-choice", "aria-label": `Use ${label}` },
      h("img", { src: asset.thumbnail_url || asset.url, alt: "" }));
    button.addEventListener("click", async () => {
      const upload = await attempt(() => uploadFromUrl(asset.url), { busy: button });
      if (!upload) return;
      set({ id: upload.id, url: asset.thumbnail_url || asset.url, label });
      dialog.close();
    });
    return button;
  }

  more.addEventListener("click", load);
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
  load();
}
