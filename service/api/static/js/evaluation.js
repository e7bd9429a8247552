// An evaluation report (service/metatrain/evaluate.py EvaluationReport.to_dict()) as a plot and a table:
// mean loss per step on held-out instances, the learned optimizer against each tuned baseline.

import { colorOf, lossChart } from "./charts.js";
import { h, fill, table } from "./dom.js";
import { lr, num } from "./format.js";

// The learned optimizer first ("lstm", or the name a held-out suite report gives it), then the baselines.
function learnedName(report) {
  return report.learned || "lstm";
}

export function curveNames(report) {
  const names = Object.keys(report.curves || {});
  const learned = learnedName(report);
  return [...names.filter((n) => n === learned), ...names.filter((n) => n !== learned)];
}

// A held-out suite report records its curves at log-spaced steps, named in `steps_at`.
export function steps(report) {
  if (Array.isArray(report.steps_at)) return report.steps_at;
  const longest = Math.max(0, ...Object.values(report.curves || {}).map((c) => c.mean.length));
  return Array.from({ length: longest }, (_, i) => i);
}

export function describe(report) {
  const params = Object.entries(report.family_params || {}).map(([k, v]) => `${k} ${JSON.stringify(v)}`);
  return `${report.family}${params.length ? ` (${params.join(", ")})` : ""} · ${report.n_instances} held-out ` +
    `instances · ${report.steps} steps`;
}

export function evaluationChart(el, report) {
  const names = curveNames(report);
  return lossChart(el, {
    x: steps(report),
    xLabel: "step",
    yLabel: "mean loss",
    series: names.map((name, i) => ({
      label: name === "lstm" ? "LSTM (learned)" : name === learnedName(report) ? `${name} (learned)` : name,
      values: report.curves[name].mean,
      color: name === learnedName(report) ? colorOf("lstm") : colorOf(name, i),  // the learned one is violet
      width: name === learnedName(report) ? 3 : 2,
    })),
  });
}

function finalText(value) {
  return value === null || value === undefined || !Number.isFinite(value) ? "diverged" : num(value);
}

export function swatch(name, i = 0, dashed = false) {
  return h("span", { class: `swatch${dashed ? " swatch-dashed" : ""}`, style: { "--swatch": colorOf(name, i) } });
}

export function finalLossTable(el, report) {
  const names = curveNames(report);
  const rows = names.map((name, i) => ({
    name, i, final: report.final ? report.final[name] : report.curves[name].mean.at(-1),
    std: report.curves[name].std.at(-1), lr: (report.learning_rates || {})[name],
    __attrs: { dataset: { optimizer: name }, class: name === report.best_baseline ? "row-best" : null },
  }));
  rows.sort((a, b) => (a.final ?? Infinity) - (b.final ?? Infinity));
  return table(el, [
    { label: "optimizer", class: "nowrap", cell: (r) => [swatch(r.name, r.i), r.name === "lstm" ? "LSTM" : r.name,
      r.name === report.best_baseline ? h("span", { class: "tag", title: "the best tuned baseline" }, "best") : null] },
    { label: "tuned lr", class: "num", cell: (r) => (r.name === "lstm" ? "—" : lr(r.lr)) },
    { label: "final loss", class: "num", cell: (r) => finalText(r.final) },
    { label: "± std", class: "num muted", cell: (r) => num(r.std, 2) },
  ], rows);
}

// "LSTM / best baseline: 0.42×" with a verdict.
export function summary(el, report) {
  if (!report.best_baseline || report.ratio === undefined) return fill(el);
  const ratio = report.ratio;
  const good = Number.isFinite(ratio) && ratio < 1;
  return fill(el, h("div", { class: `verdict ${good ? "verdict-good" : "verdict-bad"}` },
    h("div", { class: "verdict-number" }, Number.isFinite(ratio) ? `${num(ratio, 3)}×` : "∞"),
    h("div", {}, h("div", { class: "verdict-title" },
      good ? "beats the best baseline" : "behind the best baseline"),
    h("div", { class: "muted small" },
      `${learnedName(report) === "lstm" ? "LSTM" : learnedName(report)}'s final loss over ${report.best_baseline}'s`))));
}
