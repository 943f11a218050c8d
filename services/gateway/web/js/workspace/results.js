// The results grid: the session's items (images, or videos playing inline),
// each with its seed and its actions. What an action does beyond the item
// itself (running again, using as reference) is the page's: `actions`.
import { api } from "../api.js";
import { attempt, h, toast } from "../ui.js";

export function createResults({ actions }) {
  const tiles = new Map(); // item id -> element
  const grid = h("ul", { class: "ws-results", "aria-label": "Results" });
  const empty = h("p", { class: "muted ws-empty" }, "Nothing here yet: write a prompt and press Generate.");

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
    const save = h("button", { type: "button" }, item.library_asset_id ? "Saved" : "Save to library");
    save.disabled = Boolean(item.library_asset_id);
    const remove = h("button", { type: "button", class: "danger" }, "Delete");
    const asReference = isImage ? h("button", { type: "button" }, "Use as reference") : null;
    const same = h("button", { type: "button" }, "Run again (same seed)");
    const fresh = h("button", { type: "button" }, "Run again (new seed)");
    const el = h("li", { class: "ws-result card", "aria-label": `Result: ${item.prompt}, seed ${item.seed}` },
      media(item),
      h("p", { class: "ws-seed-text" }, h("span", { class: "muted" }, "Seed "), h("span", { class: "ws-seed-value" }, String(item.seed))),
      h("p", { class: "ws-result-prompt", title: item.prompt }, item.prompt),
      typed(item),
      h("div", { class: "ws-actions" }, save, remove, asReference, same, fresh),
    );

    save.addEventListener("click", async () => {
      const asset = await attempt(() => api.post(`/v1/workspace/items/${item.id}/save`), { busy: save });
      if (!asset) return;
      item.library_asset_id = asset.id;
      save.textContent = "Saved";
      save.disabled = true;
      toast("Saved to your library.", "ok");
    });
    remove.addEventListener("click", async () => {
      const done = await attempt(async () => {
        await api.del(`/v1/workspace/items/${item.id}`);
        return true;
      }, { busy: remove });
      if (!done) return;
      const next = el.nextElementSibling || el.previousElementSibling;
      drop(item.id);
      (next?.querySelector("button") || grid.parentElement)?.focus?.();
      toast("Deleted.", "ok");
    });
    asReference?.addEventListener("click", () => attempt(() => actions.useAsReference(item), { busy: asReference }));
    same.addEventListener("click", () => attempt(() => actions.runAgain(item, true), { busy: same }));
    fresh.addEventListener("click", () => attempt(() => actions.runAgain(item, false), { busy: fresh }));
    return el;
  }

  function drop(id) {
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
    el: h("div", { class: "ws-results-wrap" }, empty, grid),
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
