// Building the page: every piece of data goes in as text (never as HTML), so names, job errors and config
// values cannot inject markup.

import { ApiError, getKey, signOut } from "./api.js";

// h("a", {href: "/x", class: "link"}, "text", child, ...): an element. Props starting with "on" are
// listeners; `dataset` sets data-* attributes; null, undefined and false children are skipped.
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style") {
      for (const [k, v] of Object.entries(value)) {
        if (k.startsWith("--")) el.style.setProperty(k, v);
        else el.style[k] = v;
      }
    }
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function $(selector) {
  return document.querySelector(selector);
}

// Replace an element's children.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function pageParams() {
  const el = document.getElementById("page-params");
  return el ? JSON.parse(el.textContent) : {};
}

export function setStatus(message, kind = "info") {
  const el = document.getElementById("status");
  if (!el) return;
  el.hidden = !message;
  el.className = `status status-${kind}`;
  el.textContent = message || "";
}

export function showError(err, where = "status") {
  const message = err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`;
  if (where === "status") setStatus(message, "error");
  else {
    const el = document.getElementById(where);
    el.textContent = message;
    el.hidden = false;
  }
  if (!(err instanceof ApiError)) console.error(err);
}

export function table(el, columns, rows, { empty = "Nothing here yet." } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label))));
  const body = h("tbody", {}, rows.length
    ? rows.map((row) => h("tr", row.__attrs || {}, columns.map((c) => h("td", { class: c.class }, c.cell(row)))))
    : h("tr", {}, h("td", { class: "empty", colspan: columns.length }, empty)));
  return fill(el, head, body);
}

// Definition list from [label, value] pairs.
export function kv(el, pairs) {
  return fill(el, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

// Figures with small captions above them: [label, value] pairs, each kept together as one item.
export function stats(el, pairs) {
  return fill(el, pairs.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v ?? "—"))));
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function progressBar(fraction, state) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return h("div", { class: `progress progress-${state}`, role: "progressbar", "aria-valuemin": 0,
    "aria-valuemax": 100, "aria-valuenow": Math.round(pct) },
  h("div", { class: "progress-bar", style: { width: `${pct}%` } }));
}

// Shared page chrome: the key hint and the sign-out button in the top bar. Pages that need data call it
// first; without a key it sends the browser to the login page.
export function chrome() {
  const key = getKey();
  if (!key) {
    signOut();
    return false;
  }
  const hint = document.getElementById("key-hint");
  if (hint) hint.textContent = `${key.slice(0, 8)}…`;
  const out = document.getElementById("sign-out");
  if (out) out.addEventListener("click", () => signOut("Signed out."));
  return true;
}

// Run `fn` now and every `ms` while the page is visible; the returned function stops it.
export function every(ms, fn) {
  let timer = null, stopped = false;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { showError(err); }
    }
    if (!stopped) timer = setTimeout(tick, typeof ms === "function" ? ms() : ms);
  };
  tick();
  return () => { stopped = true; if (timer) clearTimeout(timer); };
}
