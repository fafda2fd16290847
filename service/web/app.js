// The page to try every served model. It only calls the public API (the same routes and keys a client
// uses): GET /models for the picker, the V2 infer route and the REST routes for everything else.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: [], model: null, latentRanges: null, lastLatent: null, distribution: null, firstSlider: 0, monitoring: null,
};
const MAX_SLIDERS = 8;

// --- the API -------------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function call(path, { json, form } = {}) {
  const options = { method: json || form ? "POST" : "GET", headers: headers() };
  if (json) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (form) {
    options.body = form;
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: shown as text below */ }
  if (!response.ok) {
    // REST errors are {"error": {"code", "message"}}, V2 errors {"error": "message"}.
    const error = body && body.error;
    const message = error ? (typeof error === "string" ? error : error.message) : text || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return body;
}

function showError(error) {
  $("error").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; }

// Runs an action, showing its error; `clearResults` then removes what an earlier action showed, so no old
// result stands under the new error as if it were the answer.
async function guarded(action, clearResults = null) {
  clearError();
  try {
    await action();
  } catch (error) {
    if (clearResults) clearResults();
    showError(error);
  }
}

const scoreImage = (action) => guarded(action, clearImageResults);
const scoreTable = (action) => guarded(action, clearTableResults);

const route = (model, operation) => `/models/${encodeURIComponent(model.name)}/versions/${model.version}/${operation}`;

// --- the model picker ----------------------------------------------------------------------------------

async function loadModels() {
  let listing;
  try {
    listing = await call("/models");
  } catch (error) {
    showError(error);
    return;
  }
  const select = $("model");
  const previous = select.selectedOptions[0] ? select.selectedOptions[0].dataset.key : null;
  state.models = listing.models;
  select.replaceChildren(...state.models.map((m, index) => {
    const option = new Option(`${m.name} v${m.version}${m.default ? " (default)" : ""}: ${m.status}`, String(index));
    option.dataset.key = `${m.name}/${m.version}`;
    return option;
  }));
  const keep = [...select.options].find((o) => o.dataset.key === previous);
  const firstReady = state.models.findIndex((m) => m.status === "ready");
  if (keep) select.value = keep.value;
  else if (firstReady >= 0) select.value = String(firstReady);
  if (!keep || !state.model || keep.dataset.key !== `${state.model.name}/${state.model.version}`) selectModel();
  else renderFacts(state.models[Number(select.value)]);
}

function renderFacts(model) {
  const facts = {
    status: model.status + (model.reason ? ` (${model.reason})` : ""),
    version: model.version,
    "execution provider": (model.providers || [])[0] || "none",
    threshold: model.score ? format(model.score.threshold) : "",
    input: model.input ? `${model.input.kind} [${model.input.shape.join(" x ")}]` : "",
    latent: model.latent ? `${model.latent.dim} (${model.architecture.kind})` : "",
  };
  $("facts").replaceChildren(...Object.entries(facts).map(([name, value]) => {
    const item = document.createElement("div");
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    item.dataset.fact = name;
    term.textContent = name;
    detail.append(...breakable(String(value)));
    item.append(term, detail);
    return item;
  }));
}

// A CamelCase name such as CPUExecutionProvider as its words (CPU, Execution, Provider) with <wbr> between
// them: a narrow column breaks it between words, never inside one.
function breakable(text) {
  const words = text.split(/(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])/);
  return words.flatMap((word, index) => (index ? [document.createElement("wbr"), word] : [word]));
}

function selectModel() {
  clearError();
  const model = state.models[Number($("model").value)];
  state.model = model || null;
  state.latentRanges = null;
  $("image-panel").hidden = true;
  $("table-panel").hidden = true;
  $("monitoring-panel").hidden = true;
  state.monitoring = null;
  if (!model) return;
  renderFacts(model);
  if (model.status !== "ready") {
    showError(`${model.name} v${model.version} is ${model.status}${model.reason ? `: ${model.reason}` : ""}`);
    return;
  }
  if (model.input.kind === "image") openImagePanel(model);
  else openTablePanel(model);
  guarded(loadMonitoring);
}

// --- numbers and pictures ------------------------------------------------------------------------------

function format(value) {
  return Number(value).toPrecision(4);
}

function imageShape(model) {
  const [height, width, channels = 1] = model.input.shape;
  return { height, width, channels };
}

function flat(array) { return array.flat(Infinity); }

// Draws raw-scale values (0..255) of shape H x W [x C] onto a canvas, scaled up without smoothing.
function paint(canvas, values, model, colour = null) {
  const { height, width, channels } = imageShape(model);
  const data = flat(values);
  const small = new ImageData(width, height);
  for (let pixel = 0; pixel < width * height; pixel++) {
    const rgb = colour ? colour(data[pixel]) : channels === 3
      ? [data[3 * pixel], data[3 * pixel + 1], data[3 * pixel + 2]]
      : [data[pixel], data[pixel], data[pixel]];
    small.data.set([...rgb.map((v) => Math.max(0, Math.min(255, Math.round(v)))), 255], 4 * pixel);
  }
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  scratch.getContext("2d").putImageData(small, 0, 0);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

// Black -> red -> yellow -> white, for a value already scaled to 0..1.
function heatColour(share) {
  const t = Math.max(0, Math.min(1, share));
  return [255 * Math.min(1, 3 * t), 255 * Math.max(0, Math.min(1, 3 * t - 1)), 255 * Math.max(0, 3 * t - 2)];
}

// A table cell's colour for its share of the row's squared error, on a square-root scale (small shares
// stay visible) and more opaque as the share grows.
function cellColour(share) {
  const t = Math.sqrt(Math.max(0, Math.min(1, share)));
  return [...heatColour(t), 0.15 + 0.7 * t];
}

// The legend of a heat map: a bar drawn with the map's own colour function (`colourAt(t)`, t from 0 to 1
// along the bar) and `ticks`, [position 0..1, text] pairs.
function showScale(box, colourAt, ticks, description) {
  const stops = Array.from({ length: 21 }, (_, i) => {
    const [red, green, blue, alpha = 1] = colourAt(i / 20);
    return `rgba(${Math.round(red)}, ${Math.round(green)}, ${Math.round(blue)}, ${alpha}) ${5 * i}%`;
  });
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const marks = document.createElement("span");
  marks.className = "ticks";
  marks.append(...ticks.map(([at, text]) => {
    const mark = document.createElement("span");
    mark.style.left = `${100 * at}%`;
    mark.textContent = text;
    return mark;
  }));
  box.replaceChildren(bar, marks);
  box.setAttribute("aria-label", description);
  box.hidden = false;
}

function verdict(score, threshold, anomaly, percentile) {
  const box = document.createElement("div");
  const line = document.createElement("p");
  line.innerHTML = `score <strong class="mono" data-testid="score"></strong> against threshold
    <span class="mono"></span>: <span class="verdict"></span>`;
  line.querySelector("strong").textContent = format(score);
  line.querySelector("strong").dataset.value = String(score);
  line.querySelector("span.mono").textContent = format(threshold);
  const word = line.querySelector(".verdict");
  word.textContent = anomaly ? "anomaly" : "normal";
  word.classList.add(anomaly ? "anomaly" : "normal");
  if (percentile !== undefined) {
    const rank = document.createElement("span");
    rank.innerHTML = ` (percentile <strong class="mono" data-testid="percentile"></strong> of the normal validation scores)`;
    rank.querySelector("strong").textContent = percentile.toFixed(1);
    line.append(rank);
  }
  const meter = document.createElement("div");
  meter.className = "meter";
  meter.setAttribute("aria-hidden", "true");
  const top = Math.max(score, threshold) * 1.25;
  meter.innerHTML = `<span style="width:${(100 * score) / top}%"></span><i style="left:${(100 * threshold) / top}%"></i>`;
  box.append(line, meter);
  return box;
}

// --- images --------------------------------------------------------------------------------------------

const drawing = { active: false, last: null };

function resetCanvas() {
  const context = $("draw").getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, $("draw").width, $("draw").height);
}

function canvasPoint(event) {
  const canvas = $("draw");
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
}

// A line from the previous point of the stroke; its first point alone draws a dot (the round cap).
function strokeTo(point) {
  const context = $("draw").getContext("2d");
  context.strokeStyle = "#fff";
  context.lineWidth = Number($("brush").value);
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(...(drawing.last || point));
  context.lineTo(...point);
  context.stroke();
  drawing.last = point;
}

// --- drawing from the keyboard --------------------------------------------------------------------------

// A pen the arrow keys move, in canvas pixels; its ring (#pen) shows where it is.
const pen = { x: 140, y: 140, down: false };
const PEN_STEP = 10;  // one pixel of a 28 x 28 model on the 280-pixel canvas
const PEN_MOVES = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

function onCanvasKey(event) {
  if (event.ctrlKey || event.altKey || event.metaKey) return;  // the browser's shortcuts stay the browser's
  const move = PEN_MOVES[event.key];
  if (move) movePen(move, event.shiftKey ? 4 * PEN_STEP : PEN_STEP);
  else if (event.key === " ") togglePen();
  else if (event.key === "Enter") scoreImage(scoreDrawing);
  else if (event.key === "Delete" || event.key === "Backspace") clearDrawing();
  else return;
  event.preventDefault();  // Space and the arrows would scroll the page under the pen
  showPen();
}

function movePen([dx, dy], step) {
  const canvas = $("draw");
  const from = [pen.x, pen.y];
  pen.x = Math.max(0, Math.min(canvas.width, pen.x + dx * step));
  pen.y = Math.max(0, Math.min(canvas.height, pen.y + dy * step));
  if (pen.down) {
    drawing.last = from;  // the mouse may have drawn since the pen last moved
    strokeTo([pen.x, pen.y]);
  }
}

function togglePen() {
  setPen(!pen.down);
  if (!pen.down) scoreImage(scoreDrawing);  // lifting the pen ends the stroke, as releasing the mouse does
}

function setPen(down) {
  if (down) {
    drawing.last = null;
    strokeTo([pen.x, pen.y]);
  }
  // Only a change is announced: the status is a live region.
  if (down !== pen.down) $("pen-state").textContent = down ? "Pen down: the arrow keys draw." : "Pen up.";
  pen.down = down;
}

function clearDrawing() {
  setPen(false);
  resetCanvas();
}

// The ring is the brush's size, scaled as the canvas is shown.
function showPen() {
  const canvas = $("draw");
  const ring = $("pen");
  const scale = canvas.clientWidth / canvas.width;
  const size = Number($("brush").value) * scale;
  ring.style.width = ring.style.height = `${size}px`;
  ring.style.left = `${canvas.offsetLeft + pen.x * scale - size / 2}px`;
  ring.style.top = `${canvas.offsetTop + pen.y * scale - size / 2}px`;
  ring.classList.toggle("down", pen.down);
  ring.hidden = false;
}

// The drawing as the model's rows: H x W [x C] pixels, 0..255, the canvas scaled down by the browser.
function drawingPixels() {
  const { height, width, channels } = imageShape(state.model);
  const scratch = document.createElement("canvas");
  scratch.width = width;
  scratch.height = height;
  const context = scratch.getContext("2d");
  context.drawImage($("draw"), 0, 0, width, height);
  const data = context.getImageData(0, 0, width, height).data;
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = [];
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      const rgb = [data[i], data[i + 1], data[i + 2]];
      row.push(channels === 3 ? rgb : Math.round((rgb[0] + rgb[1] + rgb[2]) / 3));
    }
    rows.push(row);
  }
  return rows;
}
window.drawingPixels = drawingPixels;  // for the browser tests: the exact pixels a score is computed from

async function scoreDrawing() {
  const model = state.model;
  const pixels = drawingPixels();
  const shape = [1, ...model.input.shape];
  // One V2 infer request gives everything the panel shows.
  const answer = await call(`/v2/models/${encodeURIComponent(model.name)}/versions/${model.version}/infer`, {
    json: {
      inputs: [{ name: "x", shape, datatype: "FP32", data: flat(pixels) }],
      outputs: ["z", "x_hat", "score", "is_anomaly", "sq_err", ...(model.score.percentiles ? ["percentile"] : [])]
        .map((name) => ({ name })),
    },
  });
  const out = Object.fromEntries(answer.outputs.map((o) => [o.name, o.data]));
  showImageResult(model, out.x_hat, out.sq_err, out.score[0], answer.parameters.threshold, out.is_anomaly[0], out.z,
    out.percentile?.[0]);
}

function showImageResult(model, reconstruction, squaredError, score, threshold, anomaly, latent, percentile) {
  paint($("reconstruction"), reconstruction, model);
  const errors = flat(squaredError);
  const top = Math.max(...errors, 1e-12);
  paint($("heat"), errors, model, (value) => heatColour(value / top));
  $("heat-scale").dataset.max = String(top);
  showScale($("heat-scale"), heatColour, [[0, "0"], [0.5, format(top / 2)], [1, format(top)]],
    `Colour scale: black is a squared error of 0, red, yellow and then white up to ${format(top)}`);
  $("image-result").replaceChildren(verdict(score, threshold, anomaly, percentile));
  state.lastLatent = flat(latent);
  $("latent").textContent = state.lastLatent.map((v) => v.toFixed(3)).join("  ");
  buildSliders();
}

async function scoreUpload(file) {
  const model = state.model;
  const picture = await createImageBitmap(file);
  resetCanvas();
  const canvas = $("draw");
  const scale = Math.min(canvas.width / picture.width, canvas.height / picture.height);
  const [w, h] = [picture.width * scale, picture.height * scale];
  canvas.getContext("2d").drawImage(picture, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  // The service converts and resizes the file itself, exactly as it does for any client's upload.
  const form = () => { const f = new FormData(); f.append("file", file); return f; };
  const scoring = form();
  scoring.append("return_sq_err", "true");
  const [scored, reconstructed, encoded] = await Promise.all([
    call(route(model, "score"), { form: scoring }),
    call(route(model, "reconstruct"), { form: form() }),
    call(route(model, "encode"), { form: form() }),
  ]);
  showImageResult(model, reconstructed.reconstructions, scored.sq_err, scored.scores[0], scored.threshold,
    scored.is_anomaly[0], encoded.latents, scored.percentiles?.[0]);
}

async function generate(n, seed) {
  return call(route(state.model, "generate"), { json: { n, seed } });
}

async function showSamples() {
  const model = state.model;
  const seed = Math.max(0, Number($("seed").value) || 0);
  const { samples } = await generate(16, seed);
  const canvas = $("samples");
  const context = canvas.getContext("2d");
  const cell = canvas.width / 4;
  const tile = document.createElement("canvas");
  tile.width = cell;
  tile.height = cell;
  context.clearRect(0, 0, canvas.width, canvas.height);
  samples.forEach((sample, index) => {
    paint(tile, sample, model);
    context.drawImage(tile, (index % 4) * cell, Math.floor(index / 4) * cell);
  });
}

async function useSample() {
  const model = state.model;
  const seed = Math.max(0, Number($("seed").value) || 0);
  const { samples } = await generate(1, seed);
  paint($("draw"), samples[0], model);
  await scoreDrawing();
}

// Slider ranges: the spread of 64 latents drawn from the model's prior, widened by a quarter.
async function latentRanges() {
  if (!state.latentRanges) {
    const { latents } = await generate(64, 0);
    state.latentRanges = latents[0].map((_, d) => {
      const values = latents.map((z) => z[d]);
      const [low, high] = [Math.min(...values), Math.max(...values)];
      const margin = 0.25 * (high - low || 1);
      return [low - margin, high + margin];
    });
  }
  return state.latentRanges;
}

// Up to MAX_SLIDERS dimensions have sliders at once; a longer latent vector is explored in windows of them,
// chosen in #latent-dims, and the page says which part of the vector the sliders show.
function showLatentWindow(dim) {
  const windows = Math.ceil(dim / MAX_SLIDERS);
  state.firstSlider = Math.min(state.firstSlider, (windows - 1) * MAX_SLIDERS);
  const last = (first) => Math.min(first + MAX_SLIDERS, dim) - 1;
  const select = $("latent-dims");
  select.replaceChildren(...Array.from({ length: windows }, (_, w) => {
    const first = w * MAX_SLIDERS;
    return new Option(`z${first}\u2013z${last(first)}`, String(first));
  }));
  select.value = String(state.firstSlider);
  $("latent-window").hidden = windows < 2;
  $("latent-shown").textContent = windows < 2
    ? `The sliders show all ${dim} latent dimensions.`
    : `The sliders show z${state.firstSlider}\u2013z${last(state.firstSlider)}, ${last(state.firstSlider) - state.firstSlider + 1} ` +
      `of the ${dim} latent dimensions; choose others below.`;
}

async function buildSliders() {
  const ranges = await latentRanges();
  const latent = state.lastLatent;
  if (!latent) return;
  showLatentWindow(latent.length);
  const box = $("sliders");
  box.replaceChildren();
  const first = state.firstSlider;
  latent.slice(first, first + MAX_SLIDERS).forEach((value, offset) => {
    const d = first + offset;
    const [low, high] = [Math.min(ranges[d][0], value), Math.max(ranges[d][1], value)];
    const label = document.createElement("label");
    label.htmlFor = `latent-${d}`;
    label.textContent = `z${d}`;
    const slider = Object.assign(document.createElement("input"), {
      type: "range", id: `latent-${d}`, min: low, max: high, step: (high - low) / 200, value,
    });
    const shown = document.createElement("output");
    shown.htmlFor = slider.id;
    shown.textContent = value.toFixed(2);
    slider.addEventListener("input", () => {
      shown.textContent = Number(slider.value).toFixed(2);
      latent[d] = Number(slider.value);
      decodeLatent(latent);
    });
    box.append(label, slider, shown);
  });
  decodeLatent(latent);
}

let decoding = null;
function decodeLatent(latent) {
  // Coalesces slider moves: one request in flight, the latest vector sent next.
  if (decoding) { decoding.next = [...latent]; return; }
  decoding = { next: null };
  guarded(async () => {
    const { reconstructions } = await call(route(state.model, "decode"), { json: { latents: [latent] } });
    paint($("explore"), reconstructions[0], state.model);
  }).finally(() => {
    const next = decoding.next;
    decoding = null;
    if (next) decodeLatent(next);
  });
}

// Everything a scored image left on the panel: a failed request leaves none of it behind.
function clearImageResults() {
  for (const id of ["reconstruction", "heat", "explore"]) {
    $(id).getContext("2d").clearRect(0, 0, $(id).width, $(id).height);
  }
  $("heat-scale").hidden = true;
  $("image-result").replaceChildren();
  $("latent").textContent = "";
  $("latent-shown").textContent = "";
  $("latent-window").hidden = true;
  $("sliders").replaceChildren();
  state.lastLatent = null;
}

function openImagePanel(model) {
  $("image-panel").hidden = false;
  resetCanvas();
  clearImageResults();
  state.firstSlider = 0;
  $("samples").getContext("2d").clearRect(0, 0, $("samples").width, $("samples").height);
  guarded(showSamples);
}

// --- tables --------------------------------------------------------------------------------------------

function featureNames(model) {
  const count = model.input.shape[0];
  const names = model.input.feature_names;
  return Array.isArray(names) && names.length === count ? names : Array.from({ length: count }, (_, i) => `f${i}`);
}

function splitLine(line) {
  return line.split(/[,;\t]/).map((cell) => cell.trim().replace(/^"(.*)"$/, "$1"));
}

// The column a table model was trained with as its label (GET /models: training.data.label_column), if any.
function labelColumn(model) {
  return (model.training && model.training.data && model.training.data.label_column) || null;
}

// Rows of numbers from CSV text; a header line of feature names, in any order, is mapped onto the model's.
// The header may also name the model's label column: its cells are kept apart, as text, and never scored.
function parseCsv(text, names, label) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (!lines.length) throw new Error("paste at least one row of numbers");
  let order = null;
  let labelAt = -1;
  let width = names.length;
  const first = splitLine(lines[0]);
  if (first.some((cell) => cell === "" || Number.isNaN(Number(cell)))) {
    const unknown = first.filter((cell) => !names.includes(cell) && cell !== label);
    const missing = names.filter((name) => !first.includes(name));
    if (unknown.length || missing.length || new Set(first).size !== first.length) {
      throw new Error(`the header does not name this model's features: unknown ${JSON.stringify(unknown)}, ` +
        `missing ${JSON.stringify(missing)}; the features are ${names.join(", ")}` +
        (label ? ` (and the label column ${label} may come too)` : ""));
    }
    order = names.map((name) => first.indexOf(name));
    labelAt = label ? first.indexOf(label) : -1;
    width = first.length;
    lines.shift();
  }
  const labels = labelAt >= 0 ? [] : null;
  const rows = lines.map((line, index) => {
    const cells = splitLine(line);
    if (cells.length !== width) {
      const takes = width === names.length ? `this model takes ${names.length}` : `the header has ${width} columns`;
      throw new Error(`row ${index + 1} has ${cells.length} values; ${takes}`);
    }
    const values = (order ? order.map((i) => cells[i]) : cells).map(Number);
    if (values.some(Number.isNaN)) throw new Error(`row ${index + 1} holds something that is not a number`);
    if (labels) labels.push(cells[labelAt]);
    return values;
  });
  return { rows, labels };
}

async function scoreRows() {
  const model = state.model;
  const names = featureNames(model);
  const label = labelColumn(model);
  const { rows, labels } = parseCsv($("csv").value, names, label);
  // Rows with labels go as named objects, the label among them: the service sets it apart and says how well
  // the scores separate its classes (the answer's `labels`).
  const inputs = labels ? rows.map((row, r) => ({ ...Object.fromEntries(names.map((n, f) => [n, row[f]])),
    [label]: labels[r] })) : rows;
  const answer = await call(route(model, "score"), { json: { inputs, return_sq_err: true } });
  renderTable(names, rows, answer, labels);
  drawDistribution(answer.scores, answer.threshold);
  const flagged = answer.is_anomaly.filter(Boolean).length;
  $("table-result").textContent = `${rows.length} rows scored: ${flagged} above the threshold ` +
    `${format(answer.threshold)}.`;
  showSeparation(answer.labels);
}

// What the rows' labels say of the scores: the counts of each class, and the AUROC or why there is none.
function showSeparation(found) {
  const box = $("label-result");
  box.hidden = !found;
  if (!found) return;
  const counts = `${found.normal} normal and ${found.anomalous} anomalous rows` +
    (found.unlabelled ? `, ${found.unlabelled} without a label` : "");
  box.replaceChildren(`Labels in column ${found.column}: ${counts}. `);
  if (found.auroc === null) {
    const note = document.createElement("span");
    note.dataset.testid = "auroc-note";
    note.textContent = found.note;
    box.append("No AUROC: ", note, ".");
    return;
  }
  const value = document.createElement("strong");
  value.className = "mono";
  value.dataset.testid = "auroc";
  value.dataset.value = String(found.auroc);
  value.textContent = found.auroc.toFixed(4);
  box.append("AUROC of the scores: ", value, " (1 ranks every anomaly above every normal row; 0.5 is chance).");
}

function renderTable(names, rows, answer, labels = null) {
  const table = $("rows-table");
  const head = document.createElement("tr");
  const label = labels ? [labelColumn(state.model)] : [];
  for (const title of ["row", "score", "percentile", "verdict", ...label, ...names]) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.textContent = title;
    head.append(cell);
  }
  const body = rows.map((row, r) => {
    const line = document.createElement("tr");
    const anomaly = answer.is_anomaly[r];
    if (anomaly) line.classList.add("anomaly");
    const total = answer.sq_err[r].reduce((a, b) => a + b, 0) || 1;
    const percentile = answer.percentiles ? answer.percentiles[r].toFixed(1) : "";
    const cells = [String(r + 1), format(answer.scores[r]), percentile, anomaly ? "anomaly" : "normal",
      ...(labels ? [labels[r]] : [])];
    cells.forEach((text, c) => {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (c === 3) cell.className = "flag";
      line.append(cell);
    });
    row.forEach((value, f) => {
      const share = answer.sq_err[r][f] / total;
      const cell = document.createElement("td");
      cell.textContent = format(value);
      cell.className = "heat";
      cell.dataset.share = share.toFixed(4);
      cell.title = `${names[f]}: squared error ${format(answer.sq_err[r][f])} (${(100 * share).toFixed(1)}% of the row's)`;
      const [red, green, blue, alpha] = cellColour(share);
      cell.style.background = `rgba(${red}, ${green}, ${blue}, ${alpha})`;
      line.append(cell);
    });
    return line;
  });
  table.replaceChildren(head, ...body);
  // The bar runs along the square root of the share, as the cells' colours do.
  showScale($("table-scale"), (t) => cellColour(t * t), [[0, "0%"], [0.5, "25%"], [1, "100%"]],
    "Colour scale: from a faint red for no share of the row's squared error to white for all of it");
}

function drawDistribution(scores, threshold) {
  state.distribution = [scores, threshold];
  const canvas = $("distribution");
  // Drawn at the size it is shown, so the text stays crisp at any window width.
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  const [width, height, pad] = [canvas.clientWidth, canvas.clientHeight, 24];
  context.clearRect(0, 0, width, height);
  // A log axis: scores of normal and anomalous rows often differ by orders of magnitude.
  const values = [...scores, threshold].map((v) => Math.log10(Math.max(v, 1e-12)));
  const [low, high] = [Math.min(...values) - 0.2, Math.max(...values) + 0.2];
  const x = (v) => pad + ((Math.log10(Math.max(v, 1e-12)) - low) / (high - low)) * (width - 2 * pad);
  context.strokeStyle = "#5a6272";
  context.beginPath();
  context.moveTo(pad, height - pad);
  context.lineTo(width - pad, height - pad);
  context.stroke();
  for (const score of scores) {
    context.fillStyle = score > threshold ? "#b3261e" : "#1f5fbf";
    context.fillRect(x(score) - 2, pad, 4, height - 2 * pad);
  }
  context.strokeStyle = "#b3261e";
  context.setLineDash([5, 4]);
  context.beginPath();
  context.moveTo(x(threshold), 6);
  context.lineTo(x(threshold), height - pad);
  context.stroke();
  context.setLineDash([]);
  context.fillStyle = "#1d2330";
  context.font = "12px system-ui, sans-serif";
  context.fillText(`threshold ${format(threshold)}`, Math.min(x(threshold) + 4, width - 110), 16);
  context.fillText(`score (log scale) ${format(10 ** low)} .. ${format(10 ** high)}`, pad, height - 6);
}

// Everything scored rows left on the panel: a failed request leaves none of it behind.
function clearTableResults() {
  $("rows-table").replaceChildren();
  $("table-result").textContent = "";
  $("label-result").replaceChildren();
  $("label-result").hidden = true;
  $("table-scale").hidden = true;
  state.distribution = null;
  $("distribution").getContext("2d").clearRect(0, 0, $("distribution").width, $("distribution").height);
}

function openTablePanel(model) {
  $("table-panel").hidden = false;
  const names = featureNames(model);
  const label = labelColumn(model);
  $("csv").placeholder = `${names.join(",")}\n${names.map(() => "0").join(",")}`;
  $("csv-label").textContent = label ? ` The label column ${label} may come too: it is not scored, and its ` +
    "labels give the AUROC of the scores." : "";
  clearTableResults();
}

// --- monitoring ------------------------------------------------------------------------------------------

const STATUS_TEXT = { no_data: "no data yet", ok: "ok", warning: "warning", drift: "drift", off: "off" };

async function loadMonitoring() {
  const model = state.model;
  if (!model || model.status !== "ready") return;
  const path = route(model, "monitoring");
  const answer = await call(path);
  if (state.model !== model) return;  // another model was chosen meanwhile
  state.monitoring = answer;
  $("monitoring-panel").hidden = false;
  $("monitor-route").textContent = `GET ${path}`;
  const status = $("monitor-status");
  status.textContent = STATUS_TEXT[answer.status] || answer.status;
  status.className = `badge ${answer.status}`;
  $("monitor-reasons").textContent = answer.status === "off" ? answer.reason : (answer.reasons || []).join("; ");
  if (answer.status === "off") {
    $("monitor-facts").replaceChildren();
    $("monitor-features").textContent = "";
    return;
  }
  const rate = answer.anomaly_rate;
  const facts = {
    "rows in the window": `${answer.window.rows_seen} of ${answer.window.rows ? answer.window.rows : `${answer.window.seconds} s`}`,
    "anomaly rate": `${percent(rate.observed)} (expected ${percent(rate.expected)}, p = ${rate.p_value.toPrecision(2)})`,
    PSI: `${answer.psi.toFixed(3)} (warning ${answer.thresholds.psi_warning}, drift ${answer.thresholds.psi_drift})`,
    KS: `${answer.ks.statistic.toFixed(3)} (p = ${answer.ks.p_value.toPrecision(2)})`,
    "rows scored": `${answer.totals.rows} (${answer.totals.flagged} flagged)`,
  };
  $("monitor-facts").replaceChildren(...Object.entries(facts).map(([name, value]) => {
    const item = document.createElement("div");
    const term = document.createElement("dt");
    const detail = document.createElement("dd");
    item.dataset.fact = name;
    term.textContent = name;
    detail.textContent = value;
    item.append(term, detail);
    return item;
  }));
  $("monitor-features").textContent = featureStory(answer.features);
  drawMonitoring();
}

function percent(value) { return `${(100 * value).toFixed(2)}%`; }

function featureStory(features) {
  if (!features) return "";
  const top = features.shares.slice(0, 3).map((f) => `${f.name} ${percent(f.share)}` +
    (f.reference_share === undefined ? "" : ` (normal ${percent(f.reference_share)})`));
  if (features.drifted === null) return `Largest shares of the squared error: ${top.join(", ")}; the package stores no reference shares.`;
  if (features.drifted.length) return `Features carrying the error: ${features.drifted.join(", ")}. Largest shares: ${top.join(", ")}.`;
  return `No feature carries more of the error than on normal rows. Largest shares: ${top.join(", ")}.`;
}

// A chart canvas at the size it is shown, so lines and text stay crisp; returns its context and size.
function chart(canvas) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  context.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  context.font = "11px system-ui, sans-serif";
  return [context, canvas.clientWidth, canvas.clientHeight];
}

function drawMonitoring() {
  const answer = state.monitoring;
  if (!answer || answer.status === "off") return;
  drawPercentileHistogram(answer.histogram);
  drawRateSeries(answer.series, answer.anomaly_rate.expected);
}

// One pair of bars per band of the reference's percentiles (up to p10, p10 to p25, ... above p99.9): the share
// of the normal validation scores in the band (grey, the reference) and the share of the window's rows (blue).
function drawPercentileHistogram(histogram) {
  const [context, width, height] = chart($("monitor-histogram"));
  const pad = { left: 34, right: 8, top: 8, bottom: 18 };
  const top = Math.max(...histogram.map((b) => Math.max(b.live, b.reference)));
  const band = (width - pad.left - pad.right) / histogram.length;
  const y = (share) => height - pad.bottom - (share / top) * (height - pad.top - pad.bottom);
  histogram.forEach((bucket, i) => {
    const left = pad.left + i * band;
    context.fillStyle = "#b9c0cc";
    context.fillRect(left + 2, y(bucket.reference), band / 2 - 2, y(0) - y(bucket.reference));
    context.fillStyle = "#1f5fbf";
    context.fillRect(left + band / 2, y(bucket.live), band / 2 - 2, y(0) - y(bucket.live));
  });
  context.textAlign = "center";
  const labels = histogram.map((bucket, i) =>
    [pad.left + (i + 0.5) * band, bucket.le_percentile === null ? `>p${histogram[i - 1].le_percentile}` : `p${bucket.le_percentile}`]);
  axes(context, width, height, pad, labels, [[y(0), "0%"], [y(top), percent(top).replace(".00", "")]]);
}

function drawRateSeries(series, expected) {
  const [context, width, height] = chart($("monitor-rate"));
  const pad = { left: 34, right: 8, top: 8, bottom: 18 };
  const rates = series.map((s) => s.anomaly_rate);
  const top = Math.max(2 * expected, ...rates) * 1.1;
  const times = series.map((s) => s.time);
  const [start, end] = [Math.min(...times), Math.max(...times)];
  const x = (t) => pad.left + (end > start ? (t - start) / (end - start) : 0.5) * (width - pad.left - pad.right);
  const y = (rate) => height - pad.bottom - (rate / top) * (height - pad.top - pad.bottom);
  context.strokeStyle = "#5a6272";
  context.setLineDash([4, 4]);
  context.beginPath();
  context.moveTo(x(start) - 4, y(expected));
  context.lineTo(width - pad.right, y(expected));
  context.stroke();
  context.setLineDash([]);
  context.strokeStyle = context.fillStyle = "#1f5fbf";
  context.beginPath();
  series.forEach((s, i) => (i ? context.lineTo(x(s.time), y(s.anomaly_rate)) : context.moveTo(x(s.time), y(s.anomaly_rate))));
  context.stroke();
  for (const s of series) context.fillRect(x(s.time) - 2, y(s.anomaly_rate) - 2, 4, 4);
  const first = series.length ? `${Math.round(end - start)} s before` : "no rows yet";
  context.textAlign = "left";
  axes(context, width, height, pad, [[pad.left, first], [width - pad.right - 50, "last rows"]],
    [[y(0), "0%"], [y(top), percent(top).replace(".00", "")]]);
}

function axes(context, width, height, pad, xTicks, yTicks) {
  context.fillStyle = "#5a6272";
  context.strokeStyle = "#d5d9e0";
  context.lineWidth = 1;
  context.beginPath();
  context.moveTo(pad.left, pad.top);
  context.lineTo(pad.left, height - pad.bottom);
  context.lineTo(width - pad.right, height - pad.bottom);
  context.stroke();
  for (const [at, text] of xTicks) context.fillText(text, at, height - 4);
  context.textAlign = "left";
  for (const [at, text] of yTicks) context.fillText(text, 2, at + 4);
}

// --- wiring --------------------------------------------------------------------------------------------

function wire() {
  $("model").addEventListener("change", selectModel);
  const canvas = $("draw");
  canvas.addEventListener("pointerdown", (event) => {
    drawing.active = true;
    drawing.last = null;
    canvas.setPointerCapture(event.pointerId);
    strokeTo(canvasPoint(event));
  });
  canvas.addEventListener("pointermove", (event) => { if (drawing.active) strokeTo(canvasPoint(event)); });
  canvas.addEventListener("keydown", onCanvasKey);
  // The ring only for keyboard focus: a click that focuses the canvas is drawing with the mouse.
  canvas.addEventListener("focus", () => { if (canvas.matches(":focus-visible")) showPen(); });
  canvas.addEventListener("blur", () => { $("pen").hidden = true; });
  canvas.addEventListener("pointerup", () => {
    drawing.active = false;
    scoreImage(scoreDrawing);
  });
  canvas.addEventListener("dragover", (event) => event.preventDefault());
  canvas.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) scoreImage(() => scoreUpload(file));
  });
  $("score-image").addEventListener("click", () => scoreImage(scoreDrawing));
  $("clear").addEventListener("click", clearDrawing);
  $("image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) scoreImage(() => scoreUpload(file));
  });
  $("use-sample").addEventListener("click", () => scoreImage(useSample));
  $("generate").addEventListener("click", () => guarded(showSamples));
  $("latent-dims").addEventListener("change", () => {
    state.firstSlider = Number($("latent-dims").value);
    guarded(buildSliders);
  });
  $("score-rows").addEventListener("click", () => scoreTable(scoreRows));
  $("csv-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    $("csv").value = await file.text();
    scoreTable(scoreRows);
  });
  $("api-key").addEventListener("change", loadModels);
  window.addEventListener("resize", () => {
    if (state.distribution) drawDistribution(...state.distribution);
    drawMonitoring();
  });
}

wire();
loadModels();
// Follow the registry: a newly published model appears, a removed one goes.
setInterval(loadModels, 5000);
// The monitoring panel follows the live window; a failed poll leaves the last answer (and says nothing over
// the page's own results).
setInterval(() => { if (!document.hidden) loadMonitoring().catch(() => {}); }, 5000);
