// Queue depth per worker family and the live workers, refreshed every few
// seconds while the admin page is open.
import { api } from "../api.js";
import { formatTime, h, mount, toast } from "../ui.js";

const REFRESH_MS = 3000;

/** A scrollable table (wide tables scroll on a phone instead of the page). */
function table(caption, headers, rows, empty) {
  return h("div", { class: "table-wrap" },
    h("table", { class: "admin-table" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty)))));
}

function queueRows(queues) {
  return queues.map((q) => h("tr", {},
    h("th", { scope: "row" }, q.family),
    h("td", { class: "mono" }, q.subject),
    h("td", {}, q.declared ? q.consumer : h("span", { class: "muted" }, `${q.consumer} (not declared)`)),
    h("td", { class: "num" }, q.pending),
    h("td", { class: "num" }, q.in_flight),
    h("td", { class: "num" }, q.redelivered),
    h("td", { class: "num" }, q.waiting_pulls)));
}

function workerRows(workers) {
  return workers.map((w) => h("tr", {},
    h("th", { scope: "row" }, w.worker_id),
    h("td", {}, w.family),
    h("td", {}, w.model_preset),
    h("td", {}, [w.device, w.dtype].filter(Boolean).join(" · ") || "—"),
    h("td", {}, w.ready ? "yes" : "no"),
    h("td", { class: "mono" }, w.current_job_id || "—"),
    h("td", { class: "num" }, w.jobs_completed),
    h("td", { class: "num" }, w.jobs_failed),
    h("td", {}, formatTime(w.last_seen)),
    h("td", {}, h("span", { class: `badge health-${w.health}` }, w.health))));
}

/** Build the section; returns {el, stop}. */
export function opsSection() {
  const queues = h("div", {}, h("p", { class: "muted" }, "Loading queues…"));
  const workers = h("div", {}, h("p", { class: "muted" }, "Loading workers…"));
  const note = h("p", { class: "muted admin-refresh", role: "status" });
  let timer = null;
  let stopped = false;
  let failing = false;

  async function refresh() {
    try {
      const [q, w] = await Promise.all([api.get("/v1/admin/queues"), api.get("/v1/admin/workers")]);
      if (stopped) return;
      mount(queues, table("Queue depth per worker family",
        ["Family", "Subject", "Consumer", "Pending", "In flight", "Redelivered", "Waiting pulls"],
        queueRows(q.queues), "No queues."));
      mount(workers, table("Workers and enhancer replicas",
        ["Worker", "Family", "Model", "Device", "Ready", "Current job", "Completed", "Failed", "Last seen", "Health"],
        workerRows(w.workers), "No worker has reported in."));
      note.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
      failing = false;
    } catch (err) {
      if (stopped) return;
      note.textContent = `Could not refresh: ${err.message}`;
      // One toast when it starts failing, not one every few seconds.
      if (!failing) toast(err.message, "error");
      failing = true;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  const el = h("section", { class: "admin-ops", "aria-labelledby": "ops-h" },
    h("h2", { id: "ops-h" }, "Queues and workers"), note, queues, workers);
  return {
    el,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
