// One job: its progress and meta-training curves drawn live from the event stream, a cancel button, and
// once it has succeeded, the evaluation of the version it published.

import { ApiError, api, events } from "../api.js";
import { colorOf, lossChart, pointCount, updateChart } from "../charts.js";
import { $, chrome, fill, h, kv, pageParams, progressBar, setStatus, showError, stats } from "../dom.js";
import { date, duration, flatten, num } from "../format.js";
import { describe, evaluationChart, finalLossTable, summary } from "../evaluation.js";

const { id } = pageParams();
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const stream = new AbortController();
addEventListener("pagehide", () => stream.abort());

// The curves, iteration -> {meta, eval}: read from GET /v1/jobs/{id}/curve when the page opens, then
// extended by each iteration the event stream reports.
const history = new Map();
let job = null;
let chart = null;
let specShown = false;
let resultShown = false;

function record(j) {
  const p = j.progress;
  if (p.iteration < 1 || p.meta_loss === null) return;
  history.set(p.iteration, { ...history.get(p.iteration), meta: p.meta_loss });
  // Validation runs every eval_every iterations and after the last one: the latest value belongs there.
  const every = (j.spec.training || {}).eval_every || 1;
  const at = p.iteration === p.total_iterations ? p.iteration : Math.floor(p.iteration / every) * every;
  if (at >= 1 && p.eval_loss !== null) history.set(at, { ...history.get(at), eval: p.eval_loss });
}

function seed(curve) {
  curve.iterations.forEach((iteration, k) => {
    history.set(iteration, { meta: curve.meta_loss[k], eval: curve.eval_loss[k] ?? undefined });
  });
}

function drawCurves() {
  const iterations = [...history.keys()].sort((a, b) => a - b);
  const data = [iterations, iterations.map((i) => history.get(i).meta ?? null),
    iterations.map((i) => history.get(i).eval ?? null)];
  const el = $("#train-chart");
  const empty = TERMINAL.has(job.state) ? "No curve: the job ended before its first iteration"
    : "Waiting for the first iteration…";
  if (!chart) {
    chart = lossChart(el, {
      x: data[0], xLabel: "iteration", yLabel: "loss", height: 300, empty,
      series: [
        { label: "meta-loss", values: data[1], color: colorOf("lstm"), width: 2, spanGaps: true },
        { label: "validation loss", values: data[2], color: colorOf("nag"), width: 2, spanGaps: true, points: true },
      ],
    });
  } else {
    el.dataset.emptyText = empty;
    updateChart(el, data);
  }
  const n = pointCount(chart);
  fill($("#train-caption"), n ? `${n} point${n === 1 ? "" : "s"}${TERMINAL.has(job.state) ? ""
    : ", updated live from the event stream"}` : "");
}

function statsOf(j) {
  const p = j.progress;
  return [
    ["meta-loss", num(p.meta_loss)], ["validation loss", num(p.eval_loss)],
    ["elapsed", duration(p.elapsed_s)], ["left", j.state === "running" ? duration(p.eta_s) : "—"],
    ["device", j.device || "—"], ["attempts", String(j.attempts)],
    ["resumed at", p.resumed_from === null ? "—" : `iteration ${p.resumed_from}`],
    ["submitted", date(j.created_at)], ["started", date(j.started_at)], ["finished", date(j.finished_at)],
  ];
}

function render(j) {
  // Answers can arrive out of order (the cancel request's answer after the stream's `end`): a job that
  // has ended never goes back to running.
  if (job && TERMINAL.has(job.state) && !TERMINAL.has(j.state)) return;
  job = j;
  record(j);
  const p = j.progress;
  fill($("#crumb-id"), j.id.slice(0, 8));
  fill($("#title"), j.name);
  const state = $("#state");
  state.className = `badge badge-${j.state}`;
  fill(state, j.state);
  document.body.dataset.state = j.state;
  fill($("#subtitle"), `job ${j.id}`);
  const fraction = j.state === "succeeded" ? 1 : p.total_iterations ? p.iteration / p.total_iterations : 0;
  $("#progress").replaceWith(Object.assign(progressBar(fraction, j.state), { id: "progress" }));
  $("#progress").classList.add("progress-large");
  fill($("#progress-label"), `Iteration ${p.iteration} of ${p.total_iterations}`,
    h("span", { class: "muted" }, ` · ${Math.round(fraction * 100)}%`));
  fill($("#progress-phase"), j.state === "running" ? (j.cancel_requested ? "stopping at the next iteration"
    : p.phase || "") : j.state === "queued" ? "waiting for a worker" : "");
  stats($("#stats"), statsOf(j));
  const error = $("#job-error");
  error.hidden = !j.error;
  fill(error, j.error || "");
  renderCancel(j);
  renderResult(j);
  drawCurves();
  if (!specShown) {
    kv($("#spec"), flatten(j.spec).map(([k, v]) => [h("span", { class: "mono" }, k), h("span", { class: "mono" }, v)]));
    specShown = true;
  }
}

function renderCancel(j) {
  const button = $("#cancel");
  button.hidden = TERMINAL.has(j.state);
  button.disabled = j.cancel_requested;
  button.textContent = j.cancel_requested ? "Cancelling…" : "Cancel job";
  if (TERMINAL.has(j.state) || j.cancel_requested) $("#cancel-confirm").hidden = true;
}

// A cancelled job cannot be resumed, so the button asks first.
function askCancel() {
  $("#cancel-confirm").hidden = false;
  $("#cancel-yes").focus();
}

async function cancel() {
  $("#cancel-confirm").hidden = true;
  $("#cancel").disabled = true;
  try {
    render(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
  } catch (err) {
    showError(err);
    if (job) renderCancel(job);
  }
}

function renderResult(j) {
  const box = $("#result");
  if (j.result) {
    fill(box, h("p", { class: "muted" }, "Published as"),
      h("p", { class: "result-ref" }, h("a", { class: "button button-primary mono", id: "result-link",
        href: `/ui/optimizers/${encodeURIComponent(j.result.name)}/versions/${j.result.version}` }, j.result.reference)),
      h("div", { id: "result-summary" }));
    if (!resultShown) { resultShown = true; showEvaluation(j.result).catch((err) => showError(err)); }
  } else if (j.state === "failed") {
    fill(box, h("p", { class: "muted" }, "Failed; nothing was published."));
  } else if (j.state === "cancelled") {
    fill(box, h("p", { class: "muted" }, `Cancelled at iteration ${j.progress.iteration}; nothing was published.`));
  } else {
    fill(box, h("p", { class: "muted" }, `When it succeeds, the trained optimizer is evaluated and published as the next version of `,
      h("span", { class: "mono" }, j.name), "."));
  }
}

async function showEvaluation(result) {
  const v = await api(`/v1/optimizers/${encodeURIComponent(result.name)}/versions/${result.version}`);
  if (!v.evaluation) return;
  $("#eval-card").hidden = false;
  fill($("#eval-caption"), describe(v.evaluation));
  summary($("#result-summary"), v.evaluation);
  evaluationChart($("#eval-chart"), v.evaluation);
  finalLossTable($("#final-losses"), v.evaluation);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follow the event stream until the job ends; reconnect (after re-reading the job) if it drops.
async function follow() {
  for (let attempt = 1; !TERMINAL.has(job.state); attempt++) {
    try {
      for await (const message of events(`/v1/jobs/${id}/events`, { signal: stream.signal })) {
        render(message.data);
        if (message.event === "end") { setStatus(""); return; }
      }
    } catch (err) {
      if (stream.signal.aborted) return;
      if (err instanceof ApiError) throw err;
      setStatus("The event stream dropped; reconnecting…", "warn");
    }
    await sleep(Math.min(attempt, 5) * 1000);
    render(await api(`/v1/jobs/${id}`));
  }
  setStatus("");
}

async function main() {
  $("#cancel").addEventListener("click", askCancel);
  $("#cancel-yes").addEventListener("click", cancel);
  $("#cancel-keep").addEventListener("click", () => { $("#cancel-confirm").hidden = true; });
  const [j, curve] = await Promise.all([api(`/v1/jobs/${id}`), api(`/v1/jobs/${id}/curve`)]);
  seed(curve);
  render(j);
  setStatus("");
  await follow();
}

if (chrome()) main().catch((err) => showError(err));
