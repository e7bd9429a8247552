// The job form: every field starts at the spec's default (rendered by the server); submitting POSTs the
// spec and opens the new job's page. A refused spec shows the API's message and marks the field it names.

import { ApiError, api } from "../api.js";
import { $, chrome } from "../dom.js";

const form = $("#job-form");
const errorBox = $("#form-error");
const familyDefaults = JSON.parse($("#family-defaults").textContent);

class FieldError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

function set(spec, path, value) {
  const keys = path.split(".");
  let node = spec;
  for (const key of keys.slice(0, -1)) node = node[key] ??= {};
  node[keys.at(-1)] = value;
}

// The form as a job spec. Blank optional numbers are left out, so the server's default applies.
function specOf(formEl) {
  const spec = {};
  for (const el of formEl.querySelectorAll("input[name], select[name], textarea[name]")) {
    const name = el.name;
    if (el.type === "checkbox") continue;
    if (name === "description" && !el.value.trim()) continue;   // optional: left out, not sent empty
    if (el.tagName === "SELECT" && el.value === "") continue;    // an optional choice left at "default"
    if (el.type === "number") {
      if (el.value.trim() === "") continue;
      const value = Number(el.value);
      if (!Number.isFinite(value)) throw new FieldError(name, `${JSON.stringify(el.value)} is not a number`);
      set(spec, name, value);
    } else if (name === "family.params") {
      let params;
      try { params = JSON.parse(el.value || "{}"); } catch (err) { throw new FieldError(name, `not valid JSON (${err.message})`); }
      if (!params || typeof params !== "object" || Array.isArray(params)) throw new FieldError(name, "must be a JSON object");
      set(spec, name, params);
    } else if (name === "evaluation.lr_grid") {
      const parts = el.value.split(/[\s,]+/).filter(Boolean);
      const bad = parts.filter((p) => !Number.isFinite(Number(p)));
      if (bad.length) throw new FieldError(name, `not numbers: ${bad.join(", ")}`);
      set(spec, name, parts.map(Number));
    } else {
      set(spec, name, el.value.trim());
    }
  }
  set(spec, "evaluation.baselines",
    [...formEl.querySelectorAll('input[name="evaluation.baselines"]:checked')].map((el) => el.value));
  return spec;
}

function clearMarks() {
  errorBox.hidden = true;
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

// The fields an error names: "body.training.unroll" is the unroll input; an error on a whole section
// ("body.training": "horizon must be a multiple of unroll") marks the section's fields its message names.
function fieldsOf({ path, msg = "" }) {
  const name = path.replace(/^body\.?/, "");
  if (!name) return [];
  const exact = form.querySelector(`[name="${CSS.escape(name)}"]`);
  if (exact) return [exact];
  return [...form.querySelectorAll(`[name^="${CSS.escape(name)}."]`)]
    .filter((el) => new RegExp(`\\b${el.name.split(".").at(-1)}\\b`).test(msg));
}

function fail(message, errors = []) {
  errorBox.textContent = message;
  errorBox.hidden = false;
  const marked = errors.flatMap(fieldsOf);
  for (const el of marked) el.setAttribute("aria-invalid", "true");
  (marked[0] || errorBox).scrollIntoView({ block: "center" });
}

form.querySelector('[name="family.name"]').addEventListener("change", (e) => {
  form.querySelector('[name="family.params"]').value = JSON.stringify(familyDefaults[e.target.value] || {});
});

form.addEventListener("reset", clearMarks);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearMarks();
  let spec;
  try {
    spec = specOf(form);
  } catch (err) {
    if (err instanceof FieldError) return fail(err.message, [{ path: err.field }]);
    throw err;
  }
  if (!spec.name) return fail("name: give the registry name to publish under", [{ path: "name" }]);
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const job = await api("/v1/jobs", { method: "POST", body: spec });
    location.href = `/ui/jobs/${job.id}`;
  } catch (err) {
    button.disabled = false;
    button.textContent = "Submit job";
    if (!(err instanceof ApiError)) throw err;
    const errors = Array.isArray(err.detail) ? err.detail.map((d) => ({ path: (d.loc || []).join("."), msg: d.msg })) : [];
    fail(err.message, errors);
  }
});

chrome();
