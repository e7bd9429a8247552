// Meta-training jobs with their state and progress; refreshed quickly while any is queued or running.

import { api } from "../api.js";
import { $, badge, chrome, every, h, progressBar, setStatus, table } from "../dom.js";
import { duration, num, relative, shortId } from "../format.js";

const ACTIVE = new Set(["queued", "running"]);
const filter = $("#state-filter");
let active = false;

function progressCell(job) {
  const p = job.progress;
  const done = job.state === "succeeded" ? 1 : p.total_iterations ? p.iteration / p.total_iterations : 0;
  return h("div", { class: "progress-cell" }, progressBar(done, job.state),
    h("span", { class: "small muted" }, `${p.iteration} / ${p.total_iterations}`,
      job.state === "running" && p.phase && p.phase !== "training" ? ` · ${p.phase}` : ""));
}

async function load() {
  const state = filter.value;
  const jobs = await api(`/v1/jobs${state ? `?state=${state}` : ""}`);
  active = jobs.some((j) => ACTIVE.has(j.state));
  table($("#jobs"), [
    { label: "state", cell: (j) => badge(j.state) },
    { label: "job", cell: (j) => [h("a", { href: `/ui/jobs/${j.id}`, class: "strong" }, j.name),
      h("div", { class: "mono small muted" }, shortId(j.id))] },
    { label: "progress", class: "wide", cell: progressCell },
    { label: "meta-loss", class: "num", cell: (j) => num(j.progress.meta_loss) },
    { label: "eval loss", class: "num", cell: (j) => num(j.progress.eval_loss) },
    { label: "elapsed", class: "num", cell: (j) => duration(j.progress.elapsed_s) },
    { label: "left", class: "num", cell: (j) => (j.state === "running" ? duration(j.progress.eta_s) : "—") },
    { label: "submitted", cell: (j) => relative(j.created_at) },
    { label: "result", cell: (j) => (j.result ? h("a", { class: "mono",
      href: `/ui/optimizers/${encodeURIComponent(j.result.name)}/versions/${j.result.version}` }, j.result.reference)
      : j.error ? h("span", { class: "muted small", title: j.error }, "failed") : "—") },
  ], jobs.map((j) => ({ ...j, __attrs: { dataset: { job: j.id, state: j.state } } })),
  { empty: state ? `No ${state} jobs.` : "No jobs yet: submit one with New job." });
  setStatus("");
}

if (chrome()) {
  const interval = () => (active ? 1500 : 10000);
  let stop = every(interval, load);
  filter.addEventListener("change", () => { stop(); stop = every(interval, load); });
}
