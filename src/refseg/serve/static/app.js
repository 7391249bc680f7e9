// refseg serve page: upload an image, type expressions (or give an example image and mask),
// see masks and ranked proposals, or a dense system's heat map.
// Plain browser JavaScript; masks arrive as COCO RLE and are decoded here.
"use strict";

const COLORS = ["#ff5000", "#1e88e5", "#43a047", "#d81b60", "#fdd835", "#8e24aa", "#00acc1",
  "#6d4c41"];
const FILL_ALPHA = 0.45;
const HEATMAP_ALPHA = 0.6;

const $ = (id) => document.getElementById(id);
const state = {
  file: null,          // the File to upload
  image: null,         // decoded <img> or null if the browser cannot show this format
  response: null,      // last /segment JSON
  selected: 0,         // index of the expression whose proposals are listed
  proposal: null,      // proposal index shown instead of the chosen masks, or null
  limits: null,        // from /health
  masks: new Map(),    // RLE counts string -> decoded mask
  layers: new Map(),   // counts|colour|alpha -> overlay canvas
  thumbs: new Map(),   // proposal index|colour -> thumbnail canvas (current response)
  heatmaps: new Map(), // heat-map data URL -> decoded <img>
  system: null,        // /health: {system, dense, visual_prompts}
};
const THUMB_SIDE = 56;

// ------------------------------------------------------------------------ RLE
// COCO compressed RLE: run lengths (column-major, starting with background) written as
// 6-bit chunks offset by 48, delta-coded against the run two places back.
function decodeCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// RLE -> {width, height, data: Uint8Array row-major, 1 = object}; memoised.
function decodeRle(rle) {
  const cached = state.masks.get(rle.counts);
  if (cached) return cached;
  const [height, width] = rle.size;
  const data = new Uint8Array(width * height);
  let pos = 0;
  let value = 0;
  for (const run of decodeCounts(rle.counts)) {
    if (value) {
      for (let i = pos; i < pos + run; i += 1) {
        data[(i % height) * width + Math.floor(i / height)] = 1;
      }
    }
    pos += run;
    value = 1 - value;
  }
  const mask = { width, height, data };
  state.masks.set(rle.counts, mask);
  return mask;
}

// ------------------------------------------------------------------- drawing
function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// An offscreen canvas with the mask filled in `color` and its boundary drawn opaque.
function maskLayer(rle, color, fillAlpha) {
  const key = `${rle.counts}|${color}|${fillAlpha}`;
  if (!state.layers.has(key)) state.layers.set(key, paintMask(decodeRle(rle), color, fillAlpha));
  return state.layers.get(key);
}

function paintMask(mask, color, fillAlpha) {
  const { width, height, data } = mask;
  const layer = document.createElement("canvas");
  layer.width = width;
  layer.height = height;
  const ctx = layer.getContext("2d");
  const pixels = ctx.createImageData(width, height);
  const [r, g, b] = hexToRgb(color);
  const fill = Math.round(fillAlpha * 255);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const i = y * width + x;
      if (!data[i]) continue;
      const edge = x === 0 || y === 0 || x === width - 1 || y === height - 1 ||
        !data[i - 1] || !data[i + 1] || !data[i - width] || !data[i + width];
      const o = 4 * i;
      pixels.data[o] = r;
      pixels.data[o + 1] = g;
      pixels.data[o + 2] = b;
      pixels.data[o + 3] = edge ? 255 : fill;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  return layer;
}

function drawBox(ctx, bbox, color, scale) {
  if (!bbox) return;
  ctx.save();
  ctx.strokeStyle = color;
  ctx.lineWidth = Math.max(1, 2 * scale);
  ctx.setLineDash([6 * scale, 4 * scale]);
  ctx.strokeRect(bbox[0] + 0.5, bbox[1] + 0.5, bbox[2], bbox[3]);
  ctx.restore();
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const size = imageSize();
  if (!size) return;
  if (canvas.width !== size.width || canvas.height !== size.height) {
    canvas.width = size.width;
    canvas.height = size.height;
  }
  fitCanvas();
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.image) {
    ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.fillStyle = "#d9dde3";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  $("stage").classList.remove("empty");
  const response = state.response;
  if (!response) return;
  const scale = Math.max(1, canvas.width / 800);
  const results = response.results;
  const current = results[state.selected];
  const heat = current && current.heatmap && $("show-heatmap").checked
    ? heatmapImage(current.heatmap) : null;
  if (heat && heat.complete && heat.naturalWidth > 0) {
    ctx.save();
    ctx.globalAlpha = HEATMAP_ALPHA;
    ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
    ctx.restore();
  }
  if (state.proposal !== null && current) {
    const p = current.proposals.find((q) => q.index === state.proposal);
    if (p) {
      const color = COLORS[state.selected % COLORS.length];
      ctx.drawImage(maskLayer(p.segmentation, color, 0.55), 0, 0,
        canvas.width, canvas.height);
      drawBox(ctx, p.bbox, color, scale);
    }
  } else {
    // every expression's mask; the selected one last so its outline is on top
    const order = results.map((_, i) => i).filter((i) => i !== state.selected);
    if (current) order.push(state.selected);
    for (const i of order) {
      if (results[i].score === null) continue;
      const color = COLORS[i % COLORS.length];
      ctx.drawImage(maskLayer(results[i].segmentation, color, FILL_ALPHA), 0, 0,
        canvas.width, canvas.height);
    }
  }
  updateCaption();
}

// A dense result's heat map (a PNG data URL) as an image; redraws once it is decoded.
function heatmapImage(url) {
  if (!state.heatmaps.has(url)) {
    const img = new Image();
    img.onload = () => draw();
    img.src = url;
    state.heatmaps.set(url, img);
  }
  return state.heatmaps.get(url);
}

// Display size: as large as the stage allows, aspect ratio kept (small images scale up).
function fitCanvas() {
  const canvas = $("canvas");
  const room = $("stage").clientWidth - 24;
  const tall = Math.max(240, window.innerHeight * 0.78);
  const scale = Math.min(room / canvas.width, tall / canvas.height);
  if (!(scale > 0)) return;
  canvas.style.width = `${Math.round(canvas.width * scale)}px`;
  canvas.style.height = `${Math.round(canvas.height * scale)}px`;
}

// A small picture of proposal `p`: the image darkened outside the mask, tinted inside.
function thumbnail(p, color) {
  const key = `${p.index}|${color}`;
  if (state.thumbs.has(key)) return state.thumbs.get(key);
  const size = imageSize();
  const fit = THUMB_SIDE / Math.max(size.width, size.height);
  const tw = Math.max(1, Math.round(size.width * fit));
  const th = Math.max(1, Math.round(size.height * fit));
  const thumb = document.createElement("canvas");
  thumb.width = tw;
  thumb.height = th;
  thumb.className = "thumb";
  const ctx = thumb.getContext("2d");
  if (state.image) {
    ctx.drawImage(state.image, 0, 0, tw, th);
  } else {
    ctx.fillStyle = "#d9dde3";
    ctx.fillRect(0, 0, tw, th);
  }
  const mask = decodeRle(p.segmentation);
  const pixels = ctx.getImageData(0, 0, tw, th);
  const tint = hexToRgb(color);
  for (let y = 0; y < th; y += 1) {
    const my = Math.min(mask.height - 1, Math.floor(((y + 0.5) * mask.height) / th));
    for (let x = 0; x < tw; x += 1) {
      const mx = Math.min(mask.width - 1, Math.floor(((x + 0.5) * mask.width) / tw));
      const inside = mask.data[my * mask.width + mx] === 1;
      const o = 4 * (y * tw + x);
      for (let c = 0; c < 3; c += 1) {
        const v = pixels.data[o + c];
        pixels.data[o + c] = inside ? 0.45 * v + 0.55 * tint[c] : 0.35 * v;
      }
    }
  }
  ctx.putImageData(pixels, 0, 0);
  state.thumbs.set(key, thumb);
  return thumb;
}

function imageSize() {
  if (state.response) return state.response.image;
  if (state.image) return { width: state.image.naturalWidth, height: state.image.naturalHeight };
  return null;
}

// ------------------------------------------------------------------ rendering
function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

function fmt(score) {
  return score === null || score === undefined ? "–" : score.toFixed(4);
}

function renderResults() {
  const list = $("results");
  list.innerHTML = "";
  state.response.results.forEach((result, i) => {
    const li = document.createElement("li");
    li.className = "result" + (i === state.selected ? " selected" : "");
    li.tabIndex = 0;
    li.innerHTML =
      `<span class="swatch" style="background:${COLORS[i % COLORS.length]}"></span>` +
      `<span class="text">${escapeHtml(result.text || "(example prompt)")}</span>` +
      `<span class="score">${fmt(result.score)}</span>` +
      `<span class="phrase">phrase: <b>${escapeHtml(result.phrase)}</b></span>`;
    const select = () => {
      state.selected = i;
      state.proposal = null;
      renderResults();
      renderProposals();
      draw();
    };
    li.addEventListener("click", select);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") select(); });
    list.appendChild(li);
  });
  $("results-box").hidden = false;
}

function renderProposals() {
  const result = state.response.results[state.selected];
  const list = $("proposal-list");
  list.innerHTML = "";
  $("proposals-for").textContent = result ? `for “${result.text || "example prompt"}”` : "";
  if (result && result.dense) {
    list.innerHTML = '<li class="message">A dense system: a probability map instead of ' +
      "proposals (the heat map on the image).</li>";
    $("proposals-box").hidden = false;
    return;
  }
  if (!result || result.proposals.length === 0) {
    list.innerHTML = '<li class="message">No proposals were found in this image.</li>';
    $("proposals-box").hidden = false;
    return;
  }
  const scores = result.proposals.map((p) => p.score);
  const low = Math.min(...scores);
  const high = Math.max(...scores);
  result.proposals.forEach((p, rank) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "proposal";
    button.dataset.index = p.index;
    button.setAttribute("aria-pressed", String(state.proposal === p.index));
    const width = high > low ? 8 + (92 * (p.score - low)) / (high - low) : 100;
    button.innerHTML =
      `<span class="rank">#${rank + 1}</span><span class="thumb-slot"></span>` +
      `<span class="bar" title="proposal ${p.index}, ${p.area} px"><span style="width:${width}%">` +
      `</span></span>` +
      `<span class="value">${fmt(p.score)}${rank === 0 ? '<span class="chosen">★</span>' : ""}` +
      "</span>";
    button.title = `proposal ${p.index}: score ${fmt(p.score)}, area ${p.area} px`;
    const color = COLORS[state.selected % COLORS.length];
    button.querySelector(".thumb-slot").appendChild(thumbnail(p, color));
    button.addEventListener("click", () => {
      state.proposal = state.proposal === p.index ? null : p.index;
      renderProposals();
      draw();
    });
    li.appendChild(button);
    list.appendChild(li);
  });
  $("proposals-box").hidden = false;
}

function updateCaption() {
  const caption = $("caption");
  const response = state.response;
  const result = response && response.results[state.selected];
  if (!result) {
    caption.textContent = "";
    return;
  }
  const total = response.image.width * response.image.height;
  if (state.proposal !== null) {
    const p = result.proposals.find((q) => q.index === state.proposal);
    caption.innerHTML = `Proposal <b>${p.index}</b> · score <b>${fmt(p.score)}</b> · ` +
      `${(100 * p.area / total).toFixed(1)}% of the image — click it again to go back.`;
    return;
  }
  const cached = response.cached ? " · features from cache" : "";
  const label = escapeHtml(result.text || "example prompt");
  if (result.dense) {
    caption.innerHTML = `<b>${label}</b> · highest probability ${fmt(result.score)} · mask ` +
      `${(100 * result.area / total).toFixed(1)}% of the image · ` +
      `${response.seconds.toFixed(2)} s${cached}`;
    return;
  }
  caption.innerHTML = result.score === null
    ? "No mask proposals for this image, so nothing could be selected."
    : `<b>${escapeHtml(result.text)}</b> → <b>${escapeHtml(result.phrase)}</b> · score ` +
      `${fmt(result.score)} · ${(100 * result.area / total).toFixed(1)}% of the image · ` +
      `${response.seconds.toFixed(2)} s${cached}`;
}

function setMessage(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

// --------------------------------------------------------------------- inputs
function chooseFile(file) {
  if (!file) return;
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    const mib = (state.limits.max_upload_bytes / 1048576).toFixed(0);
    setMessage(`That file is larger than the server accepts (${mib} MiB).`, true);
    return;
  }
  state.file = file;
  state.response = null;
  state.masks.clear();
  state.layers.clear();
  state.heatmaps.clear();
  $("heatmap-toggle").hidden = true;
  $("results-box").hidden = true;
  $("proposals-box").hidden = true;
  $("caption").textContent = "";
  $("drop").classList.add("has-file");
  $("drop-text").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} kB) — drop ` +
    "another to replace it";
  setMessage("");
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.onload = () => {
    state.image = img;
    draw();
  };
  img.onerror = () => {
    state.image = null;  // e.g. TIFF: the server can read it, the browser cannot show it
    setMessage("The browser cannot preview this format; masks will show on a grey canvas.");
  };
  img.src = URL.createObjectURL(file);
}

function expressions() {
  return $("texts").value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
}

async function submit(event) {
  event.preventDefault();
  const texts = expressions();
  const promptImage = $("prompt-image").files[0];
  const promptMask = $("prompt-mask").files[0];
  if (!state.file) return setMessage("Choose an image first.", true);
  if (Boolean(promptImage) !== Boolean(promptMask)) {
    return setMessage("An example prompt needs both the example image and its mask.", true);
  }
  if (texts.length === 0 && !promptImage) {
    return setMessage("Type at least one expression (or give an example prompt).", true);
  }
  if (state.limits && texts.length > state.limits.max_texts) {
    return setMessage(`At most ${state.limits.max_texts} expressions per request.`, true);
  }
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  for (const text of texts) form.append("text", text);
  const dense = state.system && state.system.dense;
  const options = dense ? ["threshold"] : ["method", "alpha", "beta", "k"];
  for (const name of options) {
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
  if (promptImage) {
    form.append("prompt_image", promptImage, promptImage.name);
    form.append("prompt_mask", promptMask, promptMask.name);
  }
  document.body.dataset.state = "busy";
  $("submit").disabled = true;
  const count = Math.max(texts.length, 1);
  setMessage(`Segmenting ${count} ${texts.length ? "expression" : "prompt"}${count > 1 ? "s" : ""}…`);
  try {
    const reply = await fetch("segment", { method: "POST", body: form });
    const body = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
    if (!reply.ok) throw new Error(body.error || `HTTP ${reply.status}`);
    state.response = body;
    state.thumbs.clear();
    state.selected = 0;
    state.proposal = null;
    $("heatmap-toggle").hidden = !body.results.some((r) => r.heatmap);
    renderResults();
    renderProposals();
    draw();
    setMessage("");
    document.body.dataset.state = "done";
  } catch (error) {
    setMessage(error.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("submit").disabled = false;
  }
}

async function checkHealth() {
  const status = $("status");
  try {
    const reply = await fetch("health");
    const body = await reply.json();
    state.limits = body.limits;
    if (body.status === "ready") {
      status.className = "status ready";
      state.system = { name: body.system, dense: body.dense, prompts: body.visual_prompts };
      const parts = [body.system, body.model, body.device];
      if (!body.dense) parts.push(`${body.proposals || "no"} proposals`);
      status.textContent = parts.filter((p) => p).join(" · ");
      showOptionsFor(state.system);
      if (body.methods.length) fillMethods(body.methods, body.method);
      return;
    }
    status.className = body.status === "failed" ? "status down" : "status";
    status.textContent = body.status === "failed" ? "model failed to load" : "loading model…";
    if (body.status === "failed") return;
  } catch (error) {
    status.className = "status down";
    status.textContent = "server unreachable";
  }
  setTimeout(checkHealth, 2000);
}

// Only the options the served system takes; example prompts only where it accepts them.
function showOptionsFor(system) {
  for (const el of document.querySelectorAll(".proposal-only")) el.hidden = system.dense;
  for (const el of document.querySelectorAll(".dense-only")) el.hidden = !system.dense;
  for (const id of ["prompt-image", "prompt-mask"]) $(id).disabled = !system.prompts;
  $("prompt-note").textContent = system.prompts
    ? "Segments what the example shows; with expressions too, both guide the result."
    : `The ${system.name} system takes no example prompts.`;
}

function fillMethods(methods, current) {
  const select = $("method");
  select.options[0].textContent = `server default (${current})`;
  for (const name of methods) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    select.appendChild(option);
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    chooseFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) chooseFile(item.getAsFile());
  });
  $("form").addEventListener("submit", submit);
  $("texts").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
  });
  window.addEventListener("resize", () => { if (imageSize()) fitCanvas(); });
  $("show-heatmap").addEventListener("change", () => draw());
  checkHealth();
}

wire();
