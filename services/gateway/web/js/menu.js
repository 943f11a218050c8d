// A menu button: one button that opens a short list of actions (the WAI-ARIA
// menu-button pattern). Arrow keys, Home and End move through the items,
// Escape closes and returns focus to the button, Tab or a click elsewhere
// closes; choosing an item closes the menu before the item's action runs.
import { h } from "./ui.js";

let count = 0;

/**
 * menuButton(content, [{label, onselect, disabled, href, download, action}], {label})
 * `content` is the button's text or nodes (a decorative part marked aria-hidden).
 * An item with `href` is a link (e.g. a download); the others are buttons.
 * Returns {el, button, items, close}: `items` are the item elements, in order,
 * each with its entry's `action` (a name to find it by) as data-action.
 */
export function menuButton(text, entries, { label } = {}) {
  const id = `menu-${++count}`;
  const button = h("button", {
    type: "button",
    id: `${id}-button`,
    class: "menu-button",
    "aria-haspopup": "menu",
    "aria-expanded": "false",
    "aria-controls": id,
    "aria-label": label || null,
  }, text);
  const menu = h("ul", { class: "menu", role: "menu", id, hidden: true, "aria-labelledby": button.id });
  const items = entries.filter(Boolean).map((entry) => {
    const attrs = { role: "menuitem", tabindex: "-1", class: entry.class || null, dataset: entry.action ? { action: entry.action } : null };
    const item = entry.href
      ? h("a", { ...attrs, href: entry.href, download: entry.download ?? null }, entry.label)
      : h("button", { ...attrs, type: "button" }, entry.label);
    if (entry.disabled) item.setAttribute("aria-disabled", "true");
    item.addEventListener("click", (event) => {
      // A disabled item stays focusable (so the keys still reach it) but does nothing.
      if (item.getAttribute("aria-disabled") === "true") {
        event.preventDefault();
        return;
      }
      close(false);
      entry.onselect?.(event, item);
      // Unless the action moved focus elsewhere, it goes back to the button.
      if (!document.activeElement || document.activeElement === document.body || menu.contains(document.activeElement)) {
        button.focus();
      }
    });
    menu.append(h("li", { role: "none" }, item));
    return item;
  });
  const el = h("div", { class: "menu-wrap" }, button, menu);

  function isOpen() {
    return button.getAttribute("aria-expanded") === "true";
  }

  function open(focusIndex = 0) {
    menu.hidden = false;
    button.setAttribute("aria-expanded", "true");
    // Kept inside the window: a menu that would stick out on the left opens to the right,
    // one that would run off the foot opens upwards when there is room above.
    menu.classList.remove("menu-start", "menu-up");
    const rect = menu.getBoundingClientRect();
    if (rect.left < 4) menu.classList.add("menu-start");
    if (rect.bottom > window.innerHeight && button.getBoundingClientRect().top > rect.height) menu.classList.add("menu-up");
    document.addEventListener("pointerdown", outside, true);
    move(focusIndex);
  }

  function close(refocus) {
    if (!isOpen()) return;
    menu.hidden = true;
    button.setAttribute("aria-expanded", "false");
    document.removeEventListener("pointerdown", outside, true);
    if (refocus) button.focus();
  }

  function outside(event) {
    if (!el.contains(event.target)) close(false);
  }

  /** Focus item `i`, wrapping round at either end. */
  function move(i) {
    if (!items.length) return;
    items[(i + items.length) % items.length].focus();
  }

  button.addEventListener("click", () => (isOpen() ? close(true) : open(0)));
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      open(event.key === "ArrowDown" ? 0 : items.length - 1);
    }
  });
  menu.addEventListener("keydown", (event) => {
    const i = items.indexOf(document.activeElement);
    if (event.key === "ArrowDown") move(i + 1);
    else if (event.key === "ArrowUp") move(i - 1);
    else if (event.key === "Home") move(0);
    else if (event.key === "End") move(items.length - 1);
    else if (event.key === "Escape") close(true);
    else if (event.key === "Tab") {
      close(false);
      return;
    } else if (event.key === " " && document.activeElement?.tagName === "A") document.activeElement.click();
    else return;
    event.preventDefault();
    // Escape closes the menu only, not a dialog the menu sits in.
    event.stopPropagation();
  });

  return { el, button, items, close: () => close(false) };
}
