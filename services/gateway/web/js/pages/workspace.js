// The workspace page.
import { h, mount } from "../ui.js";

export function render(main) {
  mount(main, h("h1", {}, "Workspace"));
}
