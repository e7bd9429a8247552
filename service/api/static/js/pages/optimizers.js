// Every registered optimizer as a card: newest version, how many versions, aliases.

import { api } from "../api.js";
import { $, chrome, fill, h, setStatus, showError } from "../dom.js";
import { relative } from "../format.js";

function card(o) {
  const href = `/ui/optimizers/${encodeURIComponent(o.name)}`;
  const latest = o.latest_version ? `/ui/optimizers/${encodeURIComponent(o.name)}/versions/${o.latest_version}` : href;
  return h("article", { class: "card card-link optimizer-card", dataset: { name: o.name } },
    h("div", { class: "card-head" },
      h("h2", {}, h("a", { href, class: "mono stretched" }, o.name)),
      o.latest_version ? h("span", { class: "pill" }, `v${o.latest_version}`) : null),
    h("p", { class: "muted small" },
      `${o.version_count} version${o.version_count === 1 ? "" : "s"} · created ${relative(o.created_at)}`),
    h("div", { class: "chips" }, Object.entries(o.aliases).map(([alias, v]) =>
      h("a", { class: "chip", href: `/ui/optimizers/${encodeURIComponent(o.name)}/versions/${v}` }, `@${alias} → v${v}`))),
    o.latest_version ? h("a", { class: "card-foot", href: latest }, "Latest version →") : null);
}

async function load() {
  const list = await api("/v1/optimizers");
  list.sort((a, b) => a.name.localeCompare(b.name));
  fill($("#optimizers"), list.map(card));
  setStatus(list.length ? "" : "No optimizers registered yet. Submit a meta-training job or upload a checkpoint.");
}

if (chrome()) load().catch((err) => showError(err));
