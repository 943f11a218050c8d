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

/** A short message at the top of the page; kind "error" stays until dismissed. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const close = h("button", { type: "button", class: "link", "aria-label": "Dismiss" }, "×");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", {}, message), close);
  close.addEventListener("click", () => item.remove());
  box.append(item);
  if (kind !== "error") setTimeout(() => item.remove(), 4000);
  return item;
}

/** Run an async action, showing what went wrong as a readable message. */
export async function attempt(action, { busy } = {}) {
  if (busy) busy.disabled = true;
  try {
    return await action();
  } catch (err) {
    if (err.name !== "AbortError") toast(err.message || "Something went wrong.", "error");
    return undefined;
  } finally {
    if (busy) busy.disabled = false;
  }
}

/** A labelled form control. `control` is an input/select/textarea element. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/** Show per-field messages of an ApiError next to the controls named by `names`. */
export function showFieldErrors(form, err) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const [name, message] of Object.entries(err?.fields || {})) {
    const control = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (!control) continue;
    control.setAttribute("aria-invalid", "true");
    control.closest(".field")?.append(h("small", { class: "field-error", role: "alert" }, message));
  }
}

export function formatTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function formatSeconds(s) {
  return s >= 60 ? `~${Math.round(s / 60)} min` : `~${Math.round(s)} s`;
}
