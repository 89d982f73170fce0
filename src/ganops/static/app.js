// The ganops page: talks to the /v1 API of the server that served it (same origin, no libraries).
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
const urls = {};  // element id -> the object URL it shows, revoked when replaced

function apiKey() { return sessionStorage.getItem("ganops-api-key") || ""; }

// fetch with the API key (when one is set); a 401 reveals the key field.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("Authorization", "Bearer " + apiKey());
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs an API key: enter it above");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = JSON.stringify((await response.json()).detail); } catch (e) { /* not JSON */ }
    throw new Error(`HTTP ${response.status}: ${detail}`);
  }
  return response;
}

function setStatus(id, state, text) {
  const el = $(id);
  el.dataset.state = state;
  el.className = state === "error" ? "error" : "";
  el.textContent = text;
}

// Seeds go up to 2^63-1, beyond JavaScript's exact integers: keep them as digit strings.
function seedOf(id) {
  const value = $(id).value.trim();
  if (!/^\d+$/.test(value)) throw new Error(`${id}: a seed is a non-negative integer`);
  return value;
}

function labelValue() { return model && model.conditional ? $("label").value : null; }

async function showBlob(imgId, response, statusId, text) {
  const blob = await response.blob();
  const img = $(imgId);
  img.onload = () => setStatus(statusId, "loaded", text);
  img.onerror = () => setStatus(statusId, "error", "the image did not decode");
  if (urls[imgId]) URL.revokeObjectURL(urls[imgId]);
  urls[imgId] = URL.createObjectURL(blob);
  img.src = urls[imgId];
}

function updateHash() {
  const params = new URLSearchParams({ seed: $("seed").value, a: $("seed-a").value,
                                       b: $("seed-b").value, steps: $("steps").value });
  if (labelValue() !== null) params.set("label", labelValue());
  history.replaceState(null, "", "#" + params.toString());
}

async function showImage() {
  try {
    const seed = seedOf("seed");
    const label = labelValue();
    setStatus("status", "loading", `loading seed ${seed}…`);
    const query = label === null ? "" : `?label=${encodeURIComponent(label)}`;
    const response = await api(`/v1/images/${seed}.png${query}`);
    const what = label === null ? `seed ${seed}` : `seed ${seed}, class ${model.classes[label]}`;
    await showBlob("image", response, "status", `loaded ${what}`);
    updateHash();
  } catch (e) {
    setStatus("status", "error", e.message);
  }
}

async function interpolate() {
  try {
    const a = seedOf("seed-a"), b = seedOf("seed-b");
    const steps = parseInt($("steps").value, 10);
    const label = labelValue();
    setStatus("interp-status", "loading", `interpolating ${a} → ${b}…`);
    // Built by hand so that large seeds stay exact (JSON.stringify would round them).
    const body = `{"seed_a": ${a}, "seed_b": ${b}, "steps": ${steps}` +
                 (label === null ? "" : `, "label": ${parseInt(label, 10)}`) + `}`;
    const response = await api("/v1/interpolate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body });
    await showBlob("strip", response, "interp-status", `loaded ${steps} steps from seed ${a} to seed ${b}`);
    updateHash();
  } catch (e) {
    setStatus("interp-status", "error", e.message);
  }
}

async function loadModel() {
  const response = await api("/v1/model");
  model = await response.json();
  const lineage = model.lineage || {};
  $("model-info").textContent =
    `model ${model.model_sha256.slice(0, 12)} · git ${lineage.git_commit || "unknown"} · ` +
    `${lineage.dataset || "unknown dataset"} · ${model.provider}`;
  if (model.conditional) {
    const select = $("label");
    select.replaceChildren(...model.classes.map((name, i) => new Option(`${i}: ${name}`, String(i))));
    $("label-field").hidden = false;
  }
}

async function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [key, id] of [["seed", "seed"], ["a", "seed-a"], ["b", "seed-b"], ["steps", "steps"]]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  try {
    await loadModel();
  } catch (e) {
    setStatus("status", "error", e.message);
    return;
  }
  if (params.has("label") && model.conditional) $("label").value = params.get("label");
  await showImage();
  if (params.has("a") && params.has("b")) await interpolate();
}

$("single-form").addEventListener("submit", (event) => { event.preventDefault(); showImage(); });
$("interp-form").addEventListener("submit", (event) => { event.preventDefault(); interpolate(); });
$("label").addEventListener("change", showImage);
$("random-seed").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  showImage();
});
$("api-key-save").addEventListener("click", () => {
  sessionStorage.setItem("ganops-api-key", $("api-key").value);
  $("auth").hidden = true;
  start();
});
start();
