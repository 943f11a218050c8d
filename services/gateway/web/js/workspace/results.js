// The results grid: the session's items (images, or videos playing inline),
// each with its seed and an actions menu. An image opens large when clicked;
// two results can be compared side by side. What an action does beyond the
// item itself (running again, using as reference) is the page's: `actions`.
import { api } from "../api.js";
import { menuButton } from "../menu.js";
import { attempt, h, toast } from "../ui.js";
import { downloadName, openCompare, openLightbox } from "./gallery.js";

export function createResults({ actions, typeName = (name) => name }) {
  const tiles = new Map(); // item id -> element
  const grid = h("ul", { class: "ws-results", "aria-label": "Results" });
  const empty = h("p", { class: "muted ws-empty" }, "Nothing here yet: write a prompt and press Generate.");
  // Compare: the first result chosen waits here (with a way out) for the second.
  let comparing = null;
  const compareText = h("span", {});
  const compareCancel = h("button", { type: "button", class: "link" }, "Cancel");
  const compareBar = h("p", { class: "ws-compare-bar", role: "status", hidden: true }, compareText, " ", compareCancel);
  compareCancel.addEventListener("click", () => {
    const el = tiles.get(comparing?.id);
    setComparing(null);
    el?.actionsButton.focus();
  });

  function setComparing(item) {
    tiles.get(comparing?.id)?.classList.remove("ws-comparing");
    comparing = item;
    compareBar.hidden = !item;
    compareText.textContent = item ? "Chosen to compare. Choose Compare on another result to see the two side by side." : "";
    if (item) tiles.get(item.id)?.classList.add("ws-comparing");
    for (const el of tiles.values()) {
      el.compareItem.textContent = !item ? "Compare" : el.item === item ? "Cancel compare" : "Compare with the chosen one";
    }
  }

  /** The session's results in the grid's order (newest first). */
  const ordered = () => [...grid.children].map((el) => el.item);
  /** Where focus goes back to for a result: its enlarge button, or its actions. */
  const focusTarget = (item) => {
    const el = tiles.get(item?.id);
    return el ? el.enlarge || el.actionsButton : grid.parentElement;
  };

  function enlarge(item) {
    const items = ordered();
    openLightbox(items, Math.max(0, items.indexOf(item)), { typeName, focusTile: focusTarget });
  }

  function compare(item, opener) {
    if (!comparing || comparing === item) {
      setComparing(comparing === item ? null : item);
      return;
    }
    const pair = [comparing, item];
    setComparing(null);
    openCompare(pair, { typeName, returnFocus: () => (document.contains(opener) ? opener : focusTarget(item)) });
  }

  function media(item) {
    const alt = `${item.prompt} (seed ${item.seed})`;
    if (item.content_type.startsWith("video/")) {
      return h("video", {
        src: item.url,
        poster: item.thumbnail_url || null,
        controls: true,
        muted: true,
        loop: true,
        playsInline: true,
        preload: "metadata",
        "aria-label": alt,
      });
    }
    return h("img", { src: item.url, alt, loading: "lazy", width: item.width, height: item.height });
  }

  /** The prompt as typed, under the rendered one, where an enhancer rewrote it. */
  function typed(item) {
    if (!item.original_prompt || item.original_prompt === item.prompt) return null;
    return h("p", { class: "ws-result-original", title: item.original_prompt },
      h("span", { class: "muted" }, "Typed: "), item.original_prompt);
  }

  function tile(item) {
    const isImage = item.content_type.startsWith("image/");
    // An image opens large when clicked; a video plays in place, and opens large from the menu.
    const enlargeButton = isImage
      ? h("button", { type: "button", class: "ws-enlarge", "aria-label": `Enlarge: ${item.prompt}, seed ${item.seed}` }, media(item))
      : null;
    const menu = menuButton([h("span", { "aria-hidden": "true" }, "⋯ "), "Actions"], [
      { label: "Enlarge", onselect: () => enlarge(item) },
      {
        label: item.library_asset_id ? "Saved" : "Save to library",
        action: "save",
        disabled: Boolean(item.library_asset_id),
        onselect: () => save(),
      },
      { label: "Run again (same seed)", onselect: () => attempt(() => actions.runAgain(item, true)) },
      { label: "Run again (new seed)", onselect: () => attempt(() => actions.runAgain(item, false)) },
      isImage ? { label: "Use as reference", onselect: () => attempt(() => actions.useAsReference(item)) } : null,
      { label: comparing ? "Compare with the chosen one" : "Compare", action: "compare", onselect: () => compare(item, menu.button) },
      item.url ? { label: "Download", href: item.url, download: downloadName(item) } : null,
      { label: "Delete", class: "danger", onselect: () => remove() },
    ]);
    const saveItem = menu.items.find((i) => i.dataset.action === "save");
    const el = h("li", { class: "ws-result card", "aria-label": `Result: ${item.prompt}, seed ${item.seed}` },
      enlargeButton || media(item),
      h("div", { class: "ws-result-foot" },
        h("p", { class: "ws-seed-text" }, h("span", { class: "muted" }, "Seed "), h("span", { class: "ws-seed-value" }, String(item.seed))),
        menu.el),
      h("p", { class: "ws-result-prompt", title: item.prompt }, item.prompt),
      typed(item),
    );
    el.enlarge = enlargeButton;
    el.actionsButton = menu.button;
    el.compareItem = menu.items.find((i) => i.dataset.action === "compare");
    enlargeButton?.addEventListener("click", () => enlarge(item));

    async function save() {
      saveItem.setAttribute("aria-disabled", "true");
      const asset = await attempt(() => api.post(`/v1/workspace/items/${item.id}/save`));
      if (!asset) {
        saveItem.removeAttribute("aria-disabled");
        return;
      }
      item.library_asset_id = asset.id;
      saveItem.textContent = "Saved";
      toast("Saved to your library.", "ok");
    }

    async function remove() {
      const done = await attempt(async () => {
        await api.del(`/v1/workspace/items/${item.id}`);
        return true;
      }, { busy: menu.button });
      if (!done) {
        menu.button.focus();
        return;
      }
      const next = el.nextElementSibling || el.previousElementSibling;
      drop(item.id);
      (next?.querySelector("button") || grid.parentElement)?.focus?.();
      toast("Deleted.", "ok");
    }
    return el;
  }

  function drop(id) {
    if (comparing?.id === id) setComparing(null);
    tiles.get(id)?.remove();
    tiles.delete(id);
    empty.hidden = tiles.size > 0;
  }

  /** Newest first: a job's images in their order, above older jobs'. */
  function place(item, el) {
    const later = [...grid.children].find((other) => {
      const o = other.item;
      return o.created_at < item.created_at || (o.job_id === item.job_id && o.index > item.index);
    });
    if (later) later.before(el);
    else grid.append(el);
  }

  return {
    el: h("div", { class: "ws-results-wrap" }, empty, compareBar, grid),
    add(item) {
      if (tiles.has(item.id)) return;
      const el = tile(item);
      el.item = item;
      place(item, el);
      tiles.set(item.id, el);
      empty.hidden = true;
    },
    clear() {
      for (const id of [...tiles.keys()]) drop(id);
    },
    get size() {
      return tiles.size;
    },
  };
}
