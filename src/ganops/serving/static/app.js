// The ganops page: talks to the /v1 API of the server that served it (same origin, no libraries).
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 32;  // samples per page: four rows of eight
let model = null;
let page = [];  // the seeds shown now, as digit strings
const urls = {};  // key -> the object URL it shows, revoked when replaced

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
    const error = new Error(`HTTP ${response.status}: ${detail}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

function setStatus(id, state, text) {
  const el = $(id);
  el.dataset.state = state;
  el.className = state === "error" ? "error" : "";
  el.textContent = text;
}

// Seeds go up to 2^63-1, beyond JavaScript's exact numbers: keep them as digit strings (BigInt math).
function seedOf(id) {
  const value = $(id).value.trim();
  if (!/^\d+$/.test(value)) throw new Error(`${id}: a seed is a non-negative integer`);
  return BigInt(value).toString();
}

function labelValue() { return model && model.conditional ? $("label").value : null; }
function className(label) { return label === null ? "" : `, class ${model.classes[label]}`; }

// The permanent URL of one image: it names the model, so the browser may cache it forever.
function imagePath(seed, label) {
  return `${model.image_url_prefix}${seed}.png` + (label === null ? "" : `?label=${encodeURIComponent(label)}`);
}

async function loadInto(img, key, path) {
  const blob = await (await api(path)).blob();
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("the image did not decode"));
    if (urls[key]) URL.revokeObjectURL(urls[key]);
    urls[key] = URL.createObjectURL(blob);
    img.src = urls[key];
  });
}

function updateHash() {
  const params = new URLSearchParams({ start: $("start").value, a: $("seed-a").value,
                                       b: $("seed-b").value, steps: $("steps").value });
  if (labelValue() !== null) params.set("label", labelValue());
  if ($("detail").open) params.set("seed", $("detail").dataset.seed);
  history.replaceState(null, "", "#" + params.toString());
}

async function showGrid(retried) {
  let start;
  try {
    start = BigInt(seedOf("start"));
  } catch (e) {
    setStatus("status", "error", e.message);
    return;
  }
  const label = labelValue();
  page = Array.from({ length: PAGE }, (_, i) => (start + BigInt(i)).toString());
  const what = `seeds ${page[0]}–${page[PAGE - 1]}${className(label)}`;
  setStatus("status", "loading", `loading ${what}…`);
  const cells = page.map((seed, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "cell";
    button.dataset.seed = seed;
    button.title = `seed ${seed}`;
    const img = document.createElement("img");
    img.alt = `seed ${seed}`;
    img.width = img.height = 84;
    button.append(img);
    button.addEventListener("click", () => showDetail(seed, img.src));
    return button;
  });
  $("grid").replaceChildren(...cells);
  updateHash();
  try {
    await Promise.all(cells.map((cell, i) =>
      loadInto(cell.firstChild, `cell-${i}`, imagePath(page[i], label))));
    setStatus("status", "loaded", `loaded ${what}`);
  } catch (e) {
    // 404 on a versioned URL: the server switched models. Read the model again and redraw, once.
    if (e.status === 404 && retried !== true) {
      try {
        await loadModel();
      } catch (err) {
        setStatus("status", "error", err.message);
        return;
      }
      return showGrid(true);
    }
    setStatus("status", "error", e.message);
  }
}

function turnPage(delta) {
  try {
    const start = BigInt(seedOf("start")) + BigInt(delta * PAGE);
    $("start").value = (start < 0n ? 0n : start).toString();
  } catch (e) {
    setStatus("status", "error", e.message);
    return;
  }
  showGrid();
}

async function showDetail(seed, src) {
  const label = labelValue();
  const dialog = $("detail");
  dialog.dataset.seed = seed;
  $("detail-seed").textContent = `seed ${seed}${className(label)}`;
  const url = new URL(imagePath(seed, label), location.href).href;
  $("detail-url").href = url;
  $("detail-url").textContent = url;
  if (!dialog.open) dialog.showModal();
  updateHash();
  try {
    if (src) $("detail-image").src = src;
    else await loadInto($("detail-image"), "detail", imagePath(seed, label));
    dialog.dataset.state = "loaded";
  } catch (e) {
    $("detail-seed").textContent = e.message;
    dialog.dataset.state = "error";
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
    const blob = await response.blob();
    const img = $("strip");
    img.onload = () => setStatus("interp-status", "loaded", `loaded ${steps} steps from seed ${a} to seed ${b}`);
    img.onerror = () => setStatus("interp-status", "error", "the strip did not decode");
    if (urls.strip) URL.revokeObjectURL(urls.strip);
    urls.strip = URL.createObjectURL(blob);
    img.src = urls.strip;
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
  }
  $("label-field").hidden = !model.conditional;
}

async function start() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [key, id] of [["start", "start"], ["a", "seed-a"], ["b", "seed-b"], ["steps", "steps"]]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  try {
    await loadModel();
  } catch (e) {
    setStatus("status", "error", e.message);
    return;
  }
  if (params.has("label") && model.conditional) $("label").value = params.get("label");
  await showGrid();
  if (params.has("seed") && /^\d+$/.test(params.get("seed"))) await showDetail(params.get("seed"), null);
  if (params.has("a") && params.has("b")) await interpolate();
}

function useInStrip(input) {
  $(input).value = $("detail").dataset.seed;
  $("detail").close();
  interpolate();
}

$("grid-form").addEventListener("submit", (event) => { event.preventDefault(); showGrid(); });
$("interp-form").addEventListener("submit", (event) => { event.preventDefault(); interpolate(); });
$("label").addEventListener("change", showGrid);
$("prev").addEventListener("click", () => turnPage(-1));
$("next").addEventListener("click", () => turnPage(1));
$("random-start").addEventListener("click", () => {
  $("start").value = String(Math.floor(Math.random() * 2 ** 31));
  showGrid();
});
$("detail-a").addEventListener("click", () => useInStrip("seed-a"));
$("detail-b").addEventListener("click", () => useInStrip("seed-b"));
$("detail").addEventListener("close", updateHash);
$("api-key-save").addEventListener("click", () => {
  sessionStorage.setItem("ganops-api-key", $("api-key").value);
  $("auth").hidden = true;
  start();
});
start();
