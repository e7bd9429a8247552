// One optimizer: its aliases and versions; tick two versions to compare their evaluations.

import { api } from "../api.js";
import { $, chrome, fill, h, pageParams, setStatus, showError, table } from "../dom.js";
import { bytes, date, shortDigest, shortId } from "../format.js";

const { name } = pageParams();
const base = `/ui/optimizers/${encodeURIComponent(name)}`;
const ticked = new Set();

function updateCompare() {
  const button = $("#compare");
  button.disabled = ticked.size !== 2;
  button.textContent = ticked.size === 2 ? "Compare selected" : `Compare selected (${ticked.size}/2)`;
}

function tickBox(v) {
  return h("input", { type: "checkbox", "aria-label": `compare version ${v.version}`, value: v.version,
    onchange: (e) => {
      if (e.target.checked) ticked.add(v.version); else ticked.delete(v.version);
      if (ticked.size > 2) { // keep the two most recent ticks
        const first = ticked.values().next().value;
        ticked.delete(first);
        document.querySelector(`#versions input[value="${first}"]`).checked = false;
      }
      updateCompare();
    } });
}

async function load() {
  fill($("#crumb-name"), name);
  fill($("#title"), name);
  const o = await api(`/v1/optimizers/${encodeURIComponent(name)}`);
  fill($("#subtitle"), `${o.version_count} version${o.version_count === 1 ? "" : "s"}, newest v${o.latest_version}`);
  fill($("#aliases"), Object.entries(o.aliases).map(([alias, v]) =>
    h("a", { class: "chip", href: `${base}/versions/${v}` }, `@${alias} → v${v}`)));
  const versions = [...o.versions].reverse();
  table($("#versions"), [
    { label: "", class: "narrow", cell: (v) => tickBox(v) },
    { label: "version", cell: (v) => h("a", { href: `${base}/versions/${v.version}`, class: "mono strong" }, v.reference) },
    { label: "aliases", cell: (v) => v.aliases.map((a) => h("span", { class: "chip chip-small" }, `@${a}`)) },
    { label: "source", cell: (v) => h("span", { class: `badge badge-source` }, v.source) },
    { label: "made by", cell: (v) => (v.job_id ? h("a", { href: `/ui/jobs/${v.job_id}`, class: "mono" },
      `job ${shortId(v.job_id)}`) : "—") },
    { label: "size", class: "num", cell: (v) => bytes(v.size) },
    { label: "sha256", cell: (v) => h("span", { class: "mono muted", title: v.sha256 }, shortDigest(v.sha256)) },
    { label: "created", cell: (v) => date(v.created_at) },
  ], versions.map((v) => ({ ...v, __attrs: { dataset: { version: v.version } } })));
  $("#compare").addEventListener("click", () => {
    const [a, b] = [...ticked].sort((x, y) => x - y);
    location.href = `/ui/compare?a=${encodeURIComponent(`${name}:${a}`)}&b=${encodeURIComponent(`${name}:${b}`)}`;
  });
  updateCompare();
  setStatus("");
}

if (chrome()) load().catch((err) => showError(err));
