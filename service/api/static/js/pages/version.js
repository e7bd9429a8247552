// One version: its evaluation plot and final losses, lineage and config; compare it with another.

import { api } from "../api.js";
import { $, chrome, fill, h, kv, pageParams, setStatus, showError } from "../dom.js";
import { bytes, date, flatten, shortId } from "../format.js";
import { describe, evaluationChart, finalLossTable, summary } from "../evaluation.js";

const { name, version } = pageParams();
const base = `/ui/optimizers/${encodeURIComponent(name)}`;

async function load() {
  const crumb = $("#crumb-name");
  crumb.href = base;
  fill(crumb, name);
  fill($("#crumb-version"), `v${version}`);
  fill($("#title"), `${name}:${version}`);
  const [v, o] = await Promise.all([
    api(`/v1/optimizers/${encodeURIComponent(name)}/versions/${version}`),
    api(`/v1/optimizers/${encodeURIComponent(name)}`),
  ]);
  fill($("#subtitle"), `${v.source} · ${date(v.created_at)}`,
    v.aliases.map((a) => [" ", h("span", { class: "chip chip-small" }, `@${a}`)]));

  const others = o.versions.filter((x) => x.version !== v.version);
  const select = $("#compare-with");
  fill(select, others.length ? others.reverse().map((x) => h("option", { value: x.reference }, x.reference))
    : h("option", { value: "" }, "no other version"));
  $("#compare-go").disabled = !others.length;
  $("#compare-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!select.value) return;
    location.href = `/ui/compare?a=${encodeURIComponent(v.reference)}&b=${encodeURIComponent(select.value)}`;
  });

  kv($("#lineage"), [
    ["source", v.source],
    ["made by", v.job_id ? h("a", { href: `/ui/jobs/${v.job_id}`, class: "mono" }, `job ${shortId(v.job_id)}`)
      : v.source === "job" ? "a job no longer recorded" : `no job (${v.source})`],
    ["created", date(v.created_at)],
    ["sha256", h("span", { class: "mono break" }, v.sha256)],
    ["size", bytes(v.size)],
    ["reference", h("span", { class: "mono" }, v.reference)],
  ]);
  kv($("#config"), flatten(v.config).map(([k, value]) => [h("span", { class: "mono" }, k),
    h("span", { class: "mono" }, value)]));

  if (v.evaluation) {
    fill($("#eval-caption"), describe(v.evaluation));
    evaluationChart($("#eval-chart"), v.evaluation);
    summary($("#eval-summary"), v.evaluation);
    finalLossTable($("#final-losses"), v.evaluation);
  } else {
    const none = "No evaluation report: this version was not made by a meta-training job. A job evaluates what it trains against the tuned baselines before publishing it.";
    fill($("#eval-chart"), h("div", { class: "empty-chart" }, none));
    fill($("#final-losses"));
  }
  setStatus("");
}

if (chrome()) load().catch((err) => showError(err));
