// The admin page: prompt templates, then queues and workers (refreshed while open).
import { opsSection } from "../admin/ops.js";
import { templatesSection } from "../admin/templates.js";
import { h, mount } from "../ui.js";

export function render(main) {
  const ops = opsSection();
  mount(main, h("div", { class: "admin" }, h("h1", {}, "Admin"), templatesSection(), ops.el));
  // Leaving the page stops the refresh timer.
  return () => ops.stop();
}
