// Sign in: check the key against the API, keep it in localStorage, go back where the user was going.

import { ApiError, getKey, request, safeNext, setKey, takeLoginNotice } from "../api.js";
import { $ } from "../dom.js";

const next = safeNext(new URLSearchParams(location.search).get("next"));
const form = $("#login-form");
const error = $("#login-error");
const notice = takeLoginNotice();

function show(message, kind = "error") {
  error.textContent = message;
  error.className = `alert alert-${kind}`;
  error.hidden = false;
}

if (notice) show(notice, "info");
if (getKey()) $("#key").placeholder = "a key is already kept here; enter another to replace it";

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("#key").value.trim();
  if (!key) {
    show("Enter an API key.");
    return;
  }
  const button = $("#login-submit");
  button.disabled = true;
  button.textContent = "Checking…";
  try {
    // Any valid key may read the registry, so this checks the key without needing a particular scope.
    await request("/v1/optimizers", { key });
    setKey(key);
    location.replace(next);
  } catch (err) {
    show(err instanceof ApiError && err.status === 401 ? `That key was refused: ${err.message}`
      : `Could not check the key: ${err.message}`);
    button.disabled = false;
    button.textContent = "Sign in";
  }
});
