// relsft ui: talks only to its own backend (server.py), which holds the key and calls the model server.
"use strict";

const $ = (id) => document.getElementById(id);
const IDLE_MS = 15000; // the backend sends a heartbeat every 5 s: three missed ones and we give up
const STATUS_MS = 10000; // the backend asks the model server with a 5 s timeout

class Failure extends Error {} // a message to show as it is

function banner(message) {
  $("banner").textContent = message || "";
  $("banner").hidden = !message;
}

function unreachable(e) {
  const where = `the relsft ui backend at ${location.origin}`;
  return new Failure(`cannot reach ${where} (${e.message}): is \`relsft ui\` running?`);
}

async function failureOf(res) {
  let detail = `HTTP ${res.status}`;
  try {
    const body = await res.json();
    detail = body.error || body.detail || detail;
  } catch (_) { /* not JSON */ }
  return new Failure(typeof detail === "string" ? detail : JSON.stringify(detail));
}

// POST `body` and call onEvent(name, data) for each Server-Sent Event, until `done` or `error`.
async function stream(url, body, onEvent) {
  const ctl = new AbortController();
  let timer;
  const arm = () => { clearTimeout(timer); timer = setTimeout(() => ctl.abort(), IDLE_MS); };
  arm();
  let res;
  try {
    res = await fetch(url, { method: "POST", body, signal: ctl.signal,
      headers: typeof body === "string" ? { "Content-Type": "application/json" } : {} });
  } catch (e) {
    clearTimeout(timer);
    throw ctl.signal.aborted ? new Failure(`the backend did not answer within ${IDLE_MS / 1000} s`) : unreachable(e);
  }
  try {
    if (!res.ok) throw await failureOf(res);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Failure("the backend closed the stream before the end (did it stop?)");
      arm();
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const name = /^event: (.*)$/m.exec(block);
        const data = /^data: (.*)$/m.exec(block);
        if (!name || !data) continue; // a heartbeat
        const payload = JSON.parse(data[1]);
        if (name[1] === "error") throw new Failure(payload.message);
        onEvent(name[1], payload);
        if (name[1] === "done") return;
      }
    }
  } catch (e) {
    if (e instanceof Failure) throw e;
    throw ctl.signal.aborted ? new Failure(`no word from the backend for ${IDLE_MS / 1000} s`) : unreachable(e);
  } finally {
    clearTimeout(timer);
    ctl.abort(); // let go of the connection
  }
}

async function checkStatus() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), STATUS_MS);
  try {
    const res = await fetch("api/status", { signal: ctl.signal });
    const body = await res.json();
    if (!body.ok) throw new Failure(body.error);
    $("status").textContent = `model ${body.model} at ${body.url} (${body.served_model})`;
    banner(null);
  } catch (e) {
    $("status").textContent = "not ready";
    banner(e instanceof Failure ? e.message
      : ctl.signal.aborted ? `the backend did not answer within ${STATUS_MS / 1000} s` : unreachable(e).message);
  } finally {
    clearTimeout(timer);
  }
}

// One action at a time per button; any failure goes to the banner.
async function action(button, work) {
  button.disabled = true;
  banner(null);
  try {
    await work();
  } catch (e) {
    banner(e instanceof Failure ? e.message : `unexpected error: ${e.message}`);
    if (!(e instanceof Failure)) console.error(e);
  } finally {
    button.disabled = false;
  }
}

// --- one passage ---------------------------------------------------------------------------

function extract() {
  return action($("extract"), async () => {
    const answer = $("answer");
    answer.dataset.state = "streaming";
    answer.textContent = "";
    $("relations").replaceChildren();
    try {
      await stream("api/extract", JSON.stringify({ text: $("text").value }), (event, data) => {
        if (event === "piece") answer.textContent += data.text;
        if (event !== "done") return;
        for (const r of data.relations) addItem($("relations"), `${r.a} → ${r.b}: ${r.rel}`);
        for (const line of data.bad_lines) addItem($("relations"), `unparsed: ${line}`);
        answer.dataset.state = "done";
      });
    } finally {
      if (answer.dataset.state !== "done") answer.dataset.state = "failed";
    }
  });
}

function addItem(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  list.append(li);
}

// --- a chapter's graph ---------------------------------------------------------------------

const cy = cytoscape({
  container: $("graph"),
  minZoom: 0.1, maxZoom: 1.5, // fitting a small graph would blow its labels up
  style: [
    { selector: "node", style: {
      label: "data(id)", width: "data(size)", height: "data(size)", "background-color": "#5c88c5",
      "font-size": 14, "text-valign": "bottom", "text-margin-y": 3,
      "text-outline-color": "#fff", "text-outline-width": 2 } },
    { selector: "edge", style: {
      label: "data(label)", width: "data(width)", "curve-style": "bezier", "line-color": "#90a4ae",
      "target-arrow-shape": "triangle", "target-arrow-color": "#90a4ae", "font-size": 12,
      "text-rotation": "autorotate", "text-background-color": "#fff", "text-background-opacity": 0.85,
      "text-background-padding": 2 } },
    { selector: "node[?merged]", style: { "border-width": 3, "border-color": "#1f4e8c" } },
    { selector: "edge[?symmetric]", style: { "target-arrow-shape": "none" } },
    { selector: "edge[?conflict]", style: {
      "line-color": "#c62828", "target-arrow-color": "#c62828", "line-style": "dashed", color: "#c62828" } },
    { selector: "edge:selected", style: { "line-color": "#ff8f00", "target-arrow-color": "#ff8f00", width: 4 } },
    { selector: "edge.unsure", style: { display: "none" } },
  ],
});
window.relsftGraph = cy; // the tests read nodes and edges from here

const edgeId = (e) => JSON.stringify([e.source, e.target, e.relation]);
let people = { merges: [], kept_apart: [] }; // graph.json's: why names were merged or kept apart

// An edge reads as its bond, then the labels it was stated with where they say more: 师徒 (师父, 徒弟).
function edgeLabel(e) {
  const more = e.labels.length > 1 || e.labels[0] !== e.relation ? ` (${e.labels.join(", ")})` : "";
  return (e.conflict ? "⚠ " : "") + e.relation + more;
}

// Add, update or remove what an `update` event sends: nodes and edges in graph.json's form.
function upsert(nodes, edges, removed) {
  cy.batch(() => {
    for (const r of removed) cy.getElementById(r.id !== undefined ? r.id : edgeId(r)).remove();
    for (const n of nodes) {
      const data = { ...n, merged: n.names.length > 1, size: Math.min(14 + 5 * Math.sqrt(n.mentions), 60) };
      const old = cy.getElementById(n.id);
      // A new node starts anywhere: the layout pulls it to its neighbours.
      if (old.nonempty()) old.data(data);
      else cy.add({ group: "nodes", data, position: { x: 400 * Math.random(), y: 300 * Math.random() } });
    }
    for (const e of edges) {
      const data = { ...e, id: edgeId(e), label: edgeLabel(e), width: Math.min(1.5 + e.evidence.length, 6) };
      const old = cy.getElementById(data.id);
      if (old.nonempty()) old.data(data); else cy.add({ group: "edges", data });
    }
  });
  filterByConfidence();
  if (nodes.length || edges.length || removed.length) relayout();
}

// The slider hides the relations below its confidence (one of unknown confidence stays: an answer
// cached before confidences were kept). Hidden, not removed: sliding back shows them again.
const confidenceText = (c) => (c === null || c === undefined ? "unknown" : c.toFixed(2));
function filterByConfidence() {
  const min = Number($("min-confidence").value);
  $("min-confidence-value").textContent = min.toFixed(2);
  cy.edges().forEach((e) => { const c = e.data("confidence"); e.toggleClass("unsure", c !== null && c < min); });
  $("shown").textContent = `${cy.edges().not(".unsure").length} of ${cy.edges().length} relations shown`;
}

let layoutTimer = null;
function relayout(now = false) { // at most a few times a second while answers stream in; `now`: the last one
  if (layoutTimer && !now) return;
  clearTimeout(layoutTimer);
  const run = () => {
    layoutTimer = null;
    cy.layout({ name: "cose", animate: false, randomize: false, nodeRepulsion: () => 400000,
                idealEdgeLength: () => 140, nodeOverlap: 40, padding: 50 }).run();
  };
  if (now) run(); else layoutTimer = setTimeout(run, 250);
}

function build() {
  return action($("build"), async () => {
    const file = $("file").files[0];
    if (!file) throw new Failure("choose a chapter (.txt) first");
    cy.elements().remove();
    showEvidence(null);
    $("downloads").hidden = true;
    $("progress").dataset.state = "running";
    const form = new FormData();
    form.append("file", file);
    try {
      await stream("api/book", form, (event, data) => {
        if (event === "start") $("progress").textContent = `0 / ${data.passages} passages answered`;
        if (event === "update") {
          people = { merges: data.merges, kept_apart: data.kept_apart };
          upsert(data.nodes, data.edges, data.removed);
          $("progress").textContent = `${data.done} / ${data.total} passages answered · ${cy.nodes().length} ` +
            `characters · ${cy.edges().length} relations · ${data.rejected} answer lines rejected`;
        }
        if (event === "done") {
          for (const [key, file] of [["json", "graph.json"], ["graphml", "graph.graphml"], ["csv", "relations.csv"]]) {
            $(`download-${key}`).href = data.files[file];
          }
          $("downloads").hidden = false;
          relayout(true); // where the edges stay: "done" means they can be clicked
          $("progress").dataset.state = "done";
        }
      });
    } finally {
      if ($("progress").dataset.state !== "done") $("progress").dataset.state = "failed";
    }
  });
}

// The side panel for a clicked node: every name of the person, and why names were merged or not.
function showPerson(node) {
  const d = node.data();
  const panel = $("evidence");
  panel.replaceChildren(Object.assign(document.createElement("h2"), { textContent: d.id }));
  const names = Object.assign(document.createElement("p"), { id: "names" });
  names.textContent = `Names: ${d.names.join(" · ")} (${d.mentions} mentions)`;
  const list = Object.assign(document.createElement("ul"), { id: "merges" });
  for (const m of people.merges.filter((m) => m.into === d.id)) addItem(list, `${m.names.join(", ")}: ${m.reason}`);
  for (const k of people.kept_apart.filter((k) => k.name === d.id)) {
    addItem(list, `not merged into ${k.candidates.join(" or ")}: ${k.reason}`);
  }
  panel.append(names, list);
}

// The evidence panel: every passage that states the clicked edge, its two people's names marked.
function showEvidence(edge) {
  const panel = $("evidence");
  panel.replaceChildren(Object.assign(document.createElement("h2"), { textContent: "Evidence" }));
  if (!edge) return;
  const d = edge.data();
  const title = document.createElement("p");
  title.textContent = `${d.source} ${d.symmetric ? "—" : "→"} ${d.target}: ${edgeLabel(d)}` +
    (d.conflict ? " (⚠ this pair has contradicting labels)" : "") + ` · confidence ${confidenceText(d.confidence)}`;
  const names = [...edge.source().data("names"), ...edge.target().data("names")];
  const list = document.createElement("ol");
  for (const ev of d.evidence) {
    const li = document.createElement("li");
    li.className = "passage";
    li.append(marked(ev.text, names));
    li.append(Object.assign(document.createElement("div"), {
      className: "where", textContent: `${ev.lines.join(" ")} · confidence ${confidenceText(ev.confidence)}` }));
    li.append(Object.assign(document.createElement("div"), {
      className: "where",
      textContent: `${ev.chapter}, passage ${ev.passage}, characters ${ev.chars[0]}–${ev.chars[1]}` }));
    list.append(li);
  }
  panel.append(title, list);
}

function marked(text, names) {
  const span = document.createElement("span");
  const longest = [...names].sort((a, b) => b.length - a.length); // 贾宝玉 before 宝玉
  const pattern = new RegExp(`(${longest.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`);
  for (const part of text.split(pattern)) {
    span.append(names.includes(part) ? Object.assign(document.createElement("mark"), { textContent: part }) : part);
  }
  return span;
}

cy.on("tap", "edge", (ev) => showEvidence(ev.target));
cy.on("tap", "node", (ev) => showPerson(ev.target));
$("extract").addEventListener("click", extract);
$("build").addEventListener("click", build);
$("min-confidence").addEventListener("input", filterByConfidence);
checkStatus();
