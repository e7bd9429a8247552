// Numbers, sizes, durations and times as people read them.

export function num(x, digits = 4) {
  if (x === null || x === undefined) return "—";
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "NaN" : (x > 0 ? "∞" : "−∞");
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e-3 && a < 1e5 ? String(Number(x.toPrecision(digits))) : x.toExponential(digits - 1);
}

export function lr(x) {
  return num(x, 2);
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60), sec = Math.round(s % 60);
  if (m < 60) return `${m} min ${sec} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function date(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (d.toDateString() === new Date().toDateString()) {
    return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit" });
}

// "3 min ago", "in 58 min".
export function relative(iso) {
  if (!iso) return "—";
  const s = (new Date(iso).getTime() - Date.now()) / 1000;
  const a = Math.abs(s);
  const text = a < 45 ? "a few seconds" : a < 90 ? "a minute" : a < 3600 ? `${Math.round(a / 60)} min`
    : a < 86400 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} days`;
  return s < 0 ? `${text} ago` : `in ${text}`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "—";
}

export function shortDigest(sha) {
  return sha ? `${sha.slice(0, 12)}…` : "—";
}

// Nested config as dotted keys: trained_on.settings.horizon = 100.
export function flatten(value, prefix = "") {
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
    return Object.entries(value).flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k));
  }
  return [[prefix, value === null || value === undefined ? "—" : typeof value === "object"
    ? JSON.stringify(value) : String(value)]];
}
