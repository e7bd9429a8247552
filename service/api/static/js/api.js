// The JSON API as the pages see it: the key from localStorage in an Authorization header, errors as
// ApiError (the server's {"error": {code, message, detail}}), and server-sent events read through fetch(),
// because EventSource cannot send an Authorization header and the key must never go into a URL.

const KEY_ITEM = "l2o.apiKey";
const NOTICE_ITEM = "l2o.loginNotice";

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_ITEM);
}

export function setKey(key) {
  localStorage.setItem(KEY_ITEM, key);
}

export function signOut(notice) {
  localStorage.removeItem(KEY_ITEM);
  toLogin(notice);
}

// Only a path on this site is a safe place to return to after signing in (no open redirect).
export function safeNext(next) {
  return typeof next === "string" && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\")
    ? next : "/ui/optimizers";
}

export function toLogin(notice) {
  if (notice) sessionStorage.setItem(NOTICE_ITEM, notice);
  const here = location.pathname + location.search;
  location.replace(`/ui/login?next=${encodeURIComponent(here)}`);
}

export function takeLoginNotice() {
  const notice = sessionStorage.getItem(NOTICE_ITEM);
  sessionStorage.removeItem(NOTICE_ITEM);
  return notice;
}

function authHeaders(key, extra = {}) {
  return { Authorization: `Bearer ${key}`, ...extra };
}

async function errorOf(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: fall back to the status text */ }
  const e = body && body.error;
  return new ApiError(res.status, e ? e.code : "http_error",
    e ? e.message : `${res.status} ${res.statusText || "error"}`, e ? e.detail : null);
}

// A request with an explicit key (the login page checks a key before keeping it).
export async function request(path, { method = "GET", body, key = getKey(), signal } = {}) {
  const headers = authHeaders(key, { Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw await errorOf(res);
  return res.status === 204 ? null : res.json();
}

// The pages' request: a missing or refused key sends the browser to the login page.
export async function api(path, options = {}) {
  if (!getKey()) {
    toLogin();
    return new Promise(() => {}); // the page is going away; nothing after this should run
  }
  try {
    return await request(path, options);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut(`Signed out: ${err.message}`);
      return new Promise(() => {});
    }
    throw err;
  }
}

// Yields {event, id, data} for each server-sent event of `path` until the stream ends. `data` is parsed
// as JSON. Comment lines (keep-alives) are skipped.
export async function* events(path, { signal } = {}) {
  const key = getKey();
  if (!key) { toLogin(); return; }
  const res = await fetch(path, {
    headers: authHeaders(key, { Accept: "text/event-stream" }), signal, cache: "no-store",
  });
  if (res.status === 401) { signOut("Signed out: your API key was refused"); return; }
  if (!res.ok) throw await errorOf(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const message = parseEvent(block);
        if (message) yield message;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function parseEvent(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { event, id, data: JSON.parse(data.join("\n")) };
}
