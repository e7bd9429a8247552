// Two versions' evaluations on one plot: the first solid, the second dashed, one colour per optimizer.

import { api } from "../api.js";
import { colorOf, lossChart } from "../charts.js";
import { $, chrome, fill, h, pageParams, setStatus, showError, table } from "../dom.js";
import { num } from "../format.js";
import { curveNames, describe, steps, swatch } from "../evaluation.js";

const { a, b } = pageParams();
const DASH = [undefined, [7, 5]];

function versionLink(v) {
  return h("a", { href: `/ui/optimizers/${encodeURIComponent(v.name)}/versions/${v.version}` }, v.reference);
}

function pad(values, length) {
  return Array.from({ length }, (_, i) => (i < values.length ? values[i] : null));
}

async function load() {
  fill($("#ref-a"), a);
  fill($("#ref-b"), b);
  const versions = await Promise.all([a, b].map((ref) => api(`/v1/optimizers/resolve?ref=${encodeURIComponent(ref)}`)));
  fill($("#ref-a"), versionLink(versions[0]));
  fill($("#ref-b"), versionLink(versions[1]));
  const missing = versions.filter((v) => !v.evaluation);
  if (missing.length) {
    setStatus(`${missing.map((v) => v.reference).join(" and ")} ${missing.length > 1 ? "have" : "has"} no evaluation report to compare.`, "error");
    return;
  }
  const reports = versions.map((v) => v.evaluation);
  const [da, db] = reports.map(describe);
  if (da !== db) {
    const warn = $("#mismatch");
    fill(warn, `The two were evaluated differently (${versions[0].reference}: ${da}; ${versions[1].reference}: ${db}), so their curves are not directly comparable.`);
    warn.hidden = false;
  }
  const x = steps(reports[0]).length >= steps(reports[1]).length ? steps(reports[0]) : steps(reports[1]);
  const names = [...new Set(reports.flatMap(curveNames))];
  const series = [];
  reports.forEach((report, k) => {
    curveNames(report).forEach((name) => series.push({
      label: `${versions[k].reference} ${name === "lstm" ? "LSTM" : name}`,
      values: pad(report.curves[name].mean, x.length),
      color: colorOf(name, names.indexOf(name)),
      dash: DASH[k],
      width: name === "lstm" ? 3 : 1.5,
    }));
  });
  lossChart($("#compare-chart"), { x, series, xLabel: "step", yLabel: "mean loss" });

  const final = (report, name) => (report.curves[name] ? (report.final || {})[name] ?? report.curves[name].mean.at(-1) : undefined);
  table($("#compare-table"), [
    { label: "optimizer", class: "nowrap", cell: (r) => [swatch(r.name, names.indexOf(r.name)), r.name === "lstm" ? "LSTM" : r.name] },
    { label: versions[0].reference, class: "num ref", cell: (r) => (r.a === undefined ? "—" : num(r.a)) },
    { label: versions[1].reference, class: "num ref", cell: (r) => (r.b === undefined ? "—" : num(r.b)) },
    { label: "ratio", class: "num", cell: (r) => (r.a && r.b ? `${num(r.b / r.a, 3)}×` : "—") },
  ], names.map((name) => ({ name, a: final(reports[0], name), b: final(reports[1], name),
    __attrs: { dataset: { optimizer: name } } })));
  setStatus("");
}

if (chrome()) load().catch((err) => showError(err));
