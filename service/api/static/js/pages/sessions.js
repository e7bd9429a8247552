// The caller's live sessions: which version each pins, its size, step count, when it was last used and
// how much LSTM state the server holds for it.

import { ApiError, api } from "../api.js";
import { $, chrome, every, fill, h, setStatus, table } from "../dom.js";
import { bytes, relative } from "../format.js";

function shapes(s) {
  const entries = Object.entries(s.shapes);
  const text = entries.map(([n, shape]) => `${n} [${shape.join("×")}]`).join(", ");
  return h("span", { title: text }, `${entries.length} parameter${entries.length === 1 ? "" : "s"}`);
}

async function load() {
  let list;
  try {
    list = await api("/v1/sessions");
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) {
      setStatus(`${err.message}: sessions belong to keys with the 'optimize' scope.`, "error");
      return;
    }
    throw err;
  }
  list.sort((a, b) => b.last_used_at.localeCompare(a.last_used_at));
  const total = list.reduce((n, s) => n + s.state_bytes, 0);
  fill($("#total-memory"), `${list.length} live · ${bytes(total)} held`);
  table($("#sessions"), [
    { label: "session", cell: (s) => h("span", { class: "mono" }, s.id) },
    { label: "optimizer", cell: (s) => h("a", { class: "mono",
      href: `/ui/optimizers/${encodeURIComponent(s.optimizer.name)}/versions/${s.optimizer.version}` }, s.optimizer.reference) },
    { label: "parameters", cell: shapes },
    { label: "coordinates", class: "num", cell: (s) => s.n_coords.toLocaleString() },
    { label: "step", class: "num", cell: (s) => s.step.toLocaleString() },
    { label: "last used", cell: (s) => relative(s.last_used_at) },
    { label: "expires", cell: (s) => relative(s.expires_at) },
    { label: "memory held", class: "num", cell: (s) => bytes(s.state_bytes) },
  ], list.map((s) => ({ ...s, __attrs: { dataset: { session: s.id } } })),
  { empty: "No live sessions. Open one with the SDK or POST /v1/sessions." });
  setStatus("");
}

if (chrome()) every(5000, load);
