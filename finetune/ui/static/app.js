// The finetune web app: plain JavaScript over the JSON API (finetune/ui/app.py) and /v1 (finetune/serve.py).
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (selector, root = document) => root.querySelector(selector);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
  return node;
};

async function api(path, body) {
  const options = {headers: {"X-Finetune-Token": TOKEN}};
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw Object.assign(new Error(data.error?.message || data.error || response.statusText), {data});
  return data;
}

// ---- views ----
let currentView = "recipes";
function show(view) {
  currentView = view;
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.view === view);
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  if (view === "runs") refreshRuns();
  if (view === "chat") loadModels();
}
for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => show(button.dataset.view));

// ---- recipes: the form ----
let form = null;  // {recipe, name, sections}

async function loadRecipes() {
  const list = $("#recipe-list");
  list.replaceChildren(...(await api("/api/recipes")).map(recipe =>
    el("button", {"data-recipe": recipe.path, title: recipe.header, onclick: () => openRecipe(recipe.path)}, recipe.name)));
}

async function openRecipe(path) {
  for (const button of document.querySelectorAll("#recipe-list button")) button.classList.toggle("active", button.dataset.recipe === path);
  form = await api(`/api/form?recipe=${encodeURIComponent(path)}`);
  const detail = $("#recipe-detail");
  detail.replaceChildren(
    el("h2", {}, form.name, " ", el("small", {class: "hint"}, path)),
    el("pre", {class: "header"}, form.header),
    ...form.sections.map(section => el("fieldset", {"data-section": section.section},
      el("legend", {title: section.doc}, section.section),
      ...section.fields.map(fieldRow))),
    el("div", {id: "general-errors"}),
    el("div", {class: "actions"},
      el("button", {id: "preview-button", onclick: preview}, "Preview data"),
      el("button", {id: "launch-button", class: "primary", onclick: launch}, "Launch"),
      el("input", {id: "save-name", placeholder: "new recipe name", size: 18}),
      el("button", {id: "save-button", onclick: saveRecipe}, "Save as recipe"),
      el("span", {id: "action-status"})),
    el("div", {id: "preview"}));
}

function fieldRow(field) {
  let input;
  if (field.type === "fixed") {
    input = el("input", {value: field.value, disabled: ""});
  } else if (field.choices || field.type === "bool") {
    const choices = field.choices || ["true", "false"];
    input = el("select", {}, ...choices.map(choice => el("option", {value: choice}, choice)));
    if (!choices.includes(field.value)) input.append(el("option", {value: field.value}, field.value));
    input.value = field.value;
  } else {
    input = el("input", {value: field.value, placeholder: field.type});
  }
  input.name = field.key;
  input.dataset.original = field.value;
  input.addEventListener("change", () => { markChanged(input); check(); });
  return el("div", {class: "field", "data-key": field.key},
    el("label", {for: field.key, title: `default: ${field.default}`}, field.key),
    input,
    el("div", {}, el("div", {class: "help"}, `${field.type}. ${field.help}`), el("div", {class: "error"})));
}

function markChanged(input) {
  input.closest(".field").classList.toggle("changed", input.value !== input.dataset.original);
}

function overrides() {
  return [...document.querySelectorAll("#recipe-detail .field input, #recipe-detail .field select")]
    .filter(input => !input.disabled && input.value !== input.dataset.original)
    .map(input => `${input.name}=${input.value}`);
}

function showErrors(result) {
  for (const row of document.querySelectorAll("#recipe-detail .field")) {
    $(".error", row).textContent = (result.errors || {})[row.dataset.key] || "";
  }
  $("#general-errors").replaceChildren(...(result.general || []).map(message => el("div", {class: "notice bad"}, message)));
}

async function check() {
  const result = await api("/api/validate", {recipe: form.recipe, overrides: overrides()});
  showErrors(result);
  return result.ok;
}

function status(text, kind = "") {
  $("#action-status").replaceChildren(el("span", {class: `notice ${kind}`}, text));
}

async function guarded(action, busy) {
  status(busy);
  try {
    await action();
  } catch (error) {
    if (error.data && (error.data.errors || error.data.general)) { showErrors(error.data); status("fix the fields marked in red", "bad"); }
    else status(error.message, "bad");
  }
}

async function preview() {
  await guarded(async () => {
    const result = await api("/api/preview", {recipe: form.recipe, overrides: overrides()});
    showErrors({});
    const audit = result.audit;
    $("#preview").replaceChildren(
      el("h3", {}, "Label audit (the dry run: python -m finetune.run RECIPE --dry-run)"),
      el("table", {id: "audit"},
        ...[["examples", audit.examples], ["tokens", audit.tokens], ["supervised tokens",
            `${audit.supervised_tokens} (${(100 * audit.supervised_fraction).toFixed(1)} %)`],
          ["EOS labelled", `${audit.eos_labelled} / ${audit.examples}`], ["answers truncated", audit.truncated_answers],
          ["template", result.template], ["template check", result.template_check],
          ["trainable parameters", `${result.trainable.toLocaleString()} of ${result.total.toLocaleString()}`]]
          .map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, String(value))))),
      ...result.warnings.map(warning => el("div", {class: "notice"}, warning)),
      el("p", {class: "hint"}, "The first examples as the model sees them; the loss is computed on the highlighted tokens only."),
      ...result.examples.map(spans => el("div", {class: "example"},
        ...spans.map(([text, supervised]) => supervised ? el("span", {class: "supervised"}, text) : text))));
    status("preview ready", "good");
  }, "tokenizing (first time: a few seconds) ...");
}

async function launch() {
  await guarded(async () => {
    const result = await api("/api/launch", {recipe: form.recipe, overrides: overrides()});
    status(`launched ${result.run}`, "good");
    selectedRun = result.run;
    show("runs");
  }, "launching ...");
}

async function saveRecipe() {
  await guarded(async () => {
    const result = await api("/api/save", {recipe: form.recipe, overrides: overrides(), name: $("#save-name").value});
    status(`saved ${result.path}`, "good");
    await loadRecipes();
  }, "saving ...");
}

// ---- runs ----
let selectedRun = null;
const compared = new Set();
const charts = {};

async function refreshRuns() {
  const runs = await api("/api/runs");
  $("#runs-table tbody").replaceChildren(...runs.map(run => el("tr", {"data-run": run.name, class: run.name === selectedRun ? "selected" : ""},
    el("td", {}, el("input", {type: "checkbox", class: "compare", ...(compared.has(run.name) ? {checked: ""} : {}),
      onchange: event => { event.target.checked ? compared.add(run.name) : compared.delete(run.name); drawComparison(); }})),
    el("td", {}, el("a", {href: "#", onclick: event => { event.preventDefault(); selectedRun = run.name; refreshDetail(); }}, run.name)),
    el("td", {}, el("span", {class: `state ${run.state}`}, run.state), run.error ? el("div", {class: "error"}, run.error) : null),
    el("td", {}, run.max_steps ? `${run.step ?? 0} / ${run.max_steps}` : ""),
    el("td", {}, [run.recipe, run.method].filter(Boolean).join(" · ")),
    el("td", {}, run.eval_loss_after != null ? `${run.eval_loss_before?.toFixed(3)} → ${run.eval_loss_after.toFixed(3)}` : ""),
    el("td", {},
      run.state === "running" ? el("button", {class: "stop", onclick: () => act(run.name, "stop")}, "Stop") : null,
      run.resumable ? el("button", {class: "resume", onclick: () => act(run.name, "resume")}, "Resume") : null,
      run.chat ? el("button", {class: "chat", onclick: () => { show("chat"); loadModels(run.name); }}, "Chat") : null))));
  if (selectedRun) await refreshDetail();
  await drawComparison();
}

async function act(run, action) {
  try { await api(`/api/runs/${encodeURIComponent(run)}/${action}`, {}); } catch (error) { alert(error.message); }
  await refreshRuns();
}

function series(logs, key) {
  return logs.filter(record => typeof record[key] === "number").map(record => [record.step, record[key]]);
}

function lineChart(container, title, named, points = false) {
  // named: [[label, [[x, y], ...]], ...] -> one uPlot chart, the x values merged (gaps where a series has none).
  const xs = [...new Set(named.flatMap(([, pairs]) => pairs.map(([x]) => x)))].sort((a, b) => a - b);
  const columns = named.map(([, pairs]) => { const byX = new Map(pairs); return xs.map(x => byX.has(x) ? byX.get(x) : null); });
  const total = named.reduce((sum, [, pairs]) => sum + pairs.length, 0);
  container.dataset.points = total;
  container.replaceChildren();
  if (!total) { container.append(el("div", {class: "hint"}, `${title}: no points yet`)); return; }
  const colours = ["#0070c9", "#e4572e", "#29a039", "#9b59b6", "#f0a202", "#17becf"];
  new uPlot({
    title, width: Math.max(420, container.clientWidth - 10), height: 220, scales: {x: {time: false}},
    series: [{label: "step"}, ...named.map(([label], i) => ({label, stroke: colours[i % colours.length], spanGaps: true,
      width: 2, points: {show: points || xs.length < 20}}))],
    axes: [{label: "step"}, {values: (u, ticks) => ticks.map(formatTick)}],
  }, [xs, ...columns], container);
}

function formatTick(value) {
  // uPlot's default rounds 2e-4 and 5e-4 both to "0.001": small values (learning rates) in exponent form.
  return value !== 0 && Math.abs(value) < 0.01 ? value.toExponential(1) : String(+value.toPrecision(4));
}

async function refreshDetail() {
  const run = await api(`/api/runs/${encodeURIComponent(selectedRun)}`);
  let detail = $("#run-detail");
  if (detail.dataset.run !== run.name) {
    detail.dataset.run = run.name;
    detail.replaceChildren(
      el("h2", {}, run.name, " ", el("span", {class: "state", id: "detail-state"})),
      el("div", {class: "charts"},
        el("div", {id: "chart-loss", class: "chart"}), el("div", {id: "chart-lr", class: "chart"}),
        el("div", {id: "chart-metrics", class: "chart"})),
      el("div", {id: "export-box"}),
      el("div", {id: "samples"}),
      el("details", {}, el("summary", {}, "output of the launched process"), el("pre", {id: "run-output", class: "header"})));
  }
  const state = $("#detail-state");
  state.textContent = run.state + (run.max_steps ? ` · step ${run.step ?? 0} / ${run.max_steps}` : "");
  state.className = `state ${run.state}`;
  state.dataset.state = run.state;
  const logs = run.logs;
  lineChart($("#chart-loss"), "loss", [["train loss", series(logs, "loss")], ["eval loss", series(logs, "eval_loss")]]);
  lineChart($("#chart-lr"), "learning rate", [["learning rate", series(logs, "learning_rate")]]);
  const metrics = [...new Set(logs.flatMap(Object.keys))].filter(key => /^eval_(rouge|bleu|exact)/.test(key));
  lineChart($("#chart-metrics"), "generation metrics (held-out answers)", metrics.map(key => [key.slice(5), series(logs, key)]));
  const exportBox = $("#export-box");
  if (run.state === "finished" && !exportBox.childElementCount) {
    exportBox.append(el("h3", {}, "Export"),
      el("select", {id: "export-quant"}, ...["f16", "q8_0", "f32", "bf16"].map(q => el("option", {value: q}, q))),
      el("button", {id: "export-button", onclick: () => exportRun(run.name)}, "Export to GGUF + Ollama Modelfile"),
      el("div", {id: "export-result"}));
  }
  if (run.samples && run.samples.samples && !$("#samples").childElementCount) {
    $("#samples").append(el("h3", {}, `Before / after (held-out prompts; eval loss ${run.samples.eval_loss_before?.toFixed(3)} → ${run.samples.eval_loss_after?.toFixed(3)})`),
      el("table", {class: "samples"}, el("tr", {}, ...["prompt", "reference", "before", "after"].map(h => el("th", {}, h))),
        ...run.samples.samples.map(s => el("tr", {}, ...[s.prompt, s.reference, s.before, s.after].map(t => el("td", {}, t))))));
  }
  $("#run-output").textContent = await api(`/api/runs/${encodeURIComponent(run.name)}/output`);
}

async function exportRun(run) {
  const result = $("#export-result");
  result.replaceChildren(el("div", {class: "notice"}, "exporting ..."));
  try {
    const done = await api(`/api/runs/${encodeURIComponent(run)}/export`, {quant: $("#export-quant").value});
    result.replaceChildren(el("div", {class: "notice good", id: "export-done"}, `Wrote runs/${done.gguf} (${(done.bytes / 2 ** 20).toFixed(1)} MiB)`),
      el("pre", {class: "header"}, done.output));
  } catch (error) {
    result.replaceChildren(el("div", {class: "notice bad"}, error.message));
  }
}

async function drawComparison() {
  const box = $("#compare");
  box.hidden = compared.size < 2;
  if (box.hidden) return;
  const named = [];
  for (const run of compared) {
    const logs = (await api(`/api/runs/${encodeURIComponent(run)}`)).logs;
    named.push([`${run} eval`, series(logs, "eval_loss")], [`${run} train`, series(logs, "loss")]);
  }
  lineChart($("#compare-chart"), "loss by run", named, true);
}

setInterval(() => { if (currentView === "runs") refreshRuns().catch(() => {}); }, 2000);

// ---- chat: through the OpenAI-compatible /v1 ----
let history = [];

async function loadModels(preferred) {
  const models = (await api("/v1/models")).data.map(model => model.id);
  const select = $("#chat-model");
  const keep = preferred || select.value;
  select.replaceChildren(...models.map(id => el("option", {value: id}, id)));
  if (models.includes(keep)) select.value = keep;
  if (preferred) resetChat();
}

function resetChat() { history = []; $("#chat-log").replaceChildren(); }
$("#chat-reset").addEventListener("click", resetChat);

$("#chat-form").addEventListener("submit", async event => {
  event.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text) return;
  $("#chat-input").value = "";
  history.push({role: "user", content: text});
  $("#chat-log").append(el("div", {class: "msg user"}, text));
  const answer = el("div", {class: "msg assistant streaming"});
  $("#chat-log").append(answer);
  const system = $("#chat-system").value;
  const messages = system ? [{role: "system", content: system}, ...history] : history;
  const temperature = Number($("#chat-temperature").value);
  const body = {model: $("#chat-model").value, messages, stream: true, max_tokens: Number($("#chat-max").value),
    temperature, ...(temperature > 0 ? {top_p: Number($("#chat-top-p").value)} : {})};
  try {
    const response = await fetch("/v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json", "X-Finetune-Token": TOKEN}, body: JSON.stringify(body)});
    if (!response.ok) throw new Error((await response.json()).error.message);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const delta = JSON.parse(data).choices[0]?.delta?.content;
        if (delta) answer.textContent += delta;
      }
    }
    history.push({role: "assistant", content: answer.textContent});
  } catch (error) {
    answer.classList.add("error");
    answer.textContent = error.message;
    history.pop();
  }
  answer.classList.remove("streaming");
  answer.classList.add("done");
});

loadRecipes();
