// Small DOM helpers shared by the pages: element building, messages, forms.

/**
 * h("button", {class: "primary", onclick: fn, "aria-label": "Save"}, "Save")
 * Attributes starting with "on" become listeners; `null`/`false` ones are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// Messages under the top bar. Info and "ok" ones go by themselves (not while
// pointed at or focused); errors stay until dismissed. A text already shown is
// not shown twice, a few fit at once, and a new view starts with none.
const TOAST_MS = 5000;
const MAX_TOASTS = 3;
let view = 0;

/** A short message; kind "error" stays until dismissed, the others go after a few seconds. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const same = [...box.children].find((t) => t.dataset.kind === kind && t.dataset.message === message);
  if (same && kind === "error") return same;
  if (same) dismiss(same); // shown anew, with its full time
  const close = h("button", { type: "button", class: "link", "aria-label": "Dismiss" }, "×");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", dataset: { kind, message } },
    h("span", {}, message), close);
  close.addEventListener("click", () => dismiss(item));
  item.addEventListener("keydown", (event) => {
    if (event.key === "Escape") dismiss(item);
  });
  box.append(item);
  if (kind !== "error") expire(item);
  while (box.children.length > MAX_TOASTS) {
    dismiss(box.querySelector(".toast:not(.error)") || box.firstElementChild);
  }
  return item;
}

/** Remove a message; focus in it moves to the page rather than being lost. */
function dismiss(item) {
  if (item.contains(document.activeElement)) document.getElementById("main").focus({ preventScroll: true });
  item.remove();
}

/** Dismiss `item` after TOAST_MS, counting only while it is neither pointed at nor focused. */
function expire(item) {
  let timer = null;
  const start = () => {
    clearTimeout(timer);
    if (!item.matches(":hover, :focus-within")) timer = setTimeout(() => dismiss(item), TOAST_MS);
  };
  const stop = () => clearTimeout(timer);
  item.addEventListener("pointerenter", stop);
  item.addEventListener("focusin", stop);
  item.addEventListener("pointerleave", start);
  item.addEventListener("focusout", start);
  start();
}

/** A new view: the messages of the one before go, and so do its errors still to come. */
export function clearToasts() {
  view++;
  document.getElementById("toasts").replaceChildren();
}

/**
 * Run an async action, showing what went wrong: field messages next to the
 * controls of `form` (when given), anything else as an error message. A view
 * left meanwhile shows nothing.
 */
export async function attempt(action, { busy, form } = {}) {
  const started = view;
  if (busy) busy.disabled = true;
  try {
    return await action();
  } catch (err) {
    if (view === started) showError(err, form);
    return undefined;
  } finally {
    if (busy) busy.disabled = false;
  }
}

/** Show an error: its field messages inline in `form` (when given), the rest as one error toast. */
export function showError(err, form) {
  if (err?.name === "AbortError") return;
  const rest = form ? showFieldErrors(form, err) : [];
  const inline = form && Object.keys(err?.fields || {}).length > 0;
  const message = inline ? rest.join("; ") : err?.message || "Something went wrong.";
  if (message) toast(message, "error");
}

/** A labelled form control. `control` is an input/select/textarea element. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/**
 * Show the per-field messages of an ApiError next to the controls of `form`
 * with those names, in place of any shown before (`err` null: clear them).
 * Returns the messages with no control to show them at, as "field: message".
 */
export function showFieldErrors(form, err) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  const rest = [];
  for (const [name, message] of Object.entries(err?.fields || {})) {
    const control = form.querySelector(`[name="${CSS.escape(name)}"]`);
    const box = control?.closest(".field");
    if (!box) {
      rest.push(`${name}: ${message}`);
      continue;
    }
    control.setAttribute("aria-invalid", "true");
    box.append(h("small", { class: "field-error", role: "alert" }, message));
  }
  return rest;
}

export function formatTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** Show `dialog` as a modal: its `close` button and a click on its backdrop
 * (the dialog element itself, outside its content) close it; once closed its
 * videos stop, it leaves the page and `onClosed()` runs. */
export function showDialog(dialog, { close, onClosed }) {
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  dialog.addEventListener("close", () => {
    for (const v of dialog.querySelectorAll("video")) v.pause();
    dialog.remove();
    onClosed?.();
  });
  document.body.append(dialog);
  dialog.showModal();
}
