/* knnrag web page: plain JavaScript, no dependencies. Every piece of data reaches the page through
   textContent / text nodes (never parsed as markup), so a hostile query or document stays text. */
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "knnrag-token";
const SCALE = 2.0; // nats of log-probability change at full colour
const state = { collection: null, explorer: null, detailCache: new Map(), genAbort: null, job: null };

function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") n.className = v;
    else if (k === "text") n.textContent = String(v);
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

function setStatus(msg, error) {
  const s = $("status");
  s.textContent = msg || "";
  s.classList.toggle("error", !!error);
}

class ApiError extends Error {
  constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const tok = sessionStorage.getItem(TOKEN_KEY);
  if (tok) h.Authorization = "Bearer " + tok;
  return h;
}

async function failure(r) {
  const text = await r.text();
  let msg = text, hint = null;
  try { const d = JSON.parse(text); msg = d.error || text; hint = d.hint; } catch (e) { /* a plain-text refusal */ }
  if (r.status === 401) $("token-form").hidden = false;
  return new ApiError(r.status, msg || ("HTTP " + r.status), hint);
}

async function api(path, body) {
  const opt = { method: body === undefined ? "GET" : "POST", headers: headers(body !== undefined) };
  if (body !== undefined) opt.body = JSON.stringify(body);
  const r = await fetch(path, opt);
  if (!r.ok) throw await failure(r);
  return r.json();
}

function showError(where, e) {
  const msg = e instanceof ApiError ? e.message + (e.hint ? " — " + e.hint : "") : String(e);
  where.replaceChildren(el("p", { class: "error", role: "alert", text: msg }));
  setStatus("");
}

/* ---------- text with marked ranges ---------- */
function marked(text, ranges, cls) {
  const frag = document.createDocumentFragment();
  let at = 0;
  const sorted = (ranges || []).filter((r) => r && r[1] > r[0]).sort((a, b) => a[0] - b[0]);
  for (const [a, b] of sorted) {
    if (a < at || a >= text.length) continue;
    if (a > at) frag.append(document.createTextNode(text.slice(at, a)));
    frag.append(el("mark", { class: cls || null, text: text.slice(a, Math.min(b, text.length)) }));
    at = Math.min(b, text.length);
  }
  if (at < text.length) frag.append(document.createTextNode(text.slice(at)));
  return frag;
}

const page = (h) => (h.metadata && (h.metadata.page ?? h.metadata.page_number)) ?? null; // PDFs: the page, when ingest records it
const lines = (h) => `${h.source}:${h.start_line}` + (h.end_line && h.end_line !== h.start_line ? `-${h.end_line}` : "") +
  (page(h) !== null ? ` (page ${page(h)})` : "");
const fmt = (x, d = 3) => (x === null || x === undefined ? "—" : Number(x).toFixed(d));

/* ---------- tabs ---------- */
function selectTab(tab, focus) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", on ? "true" : "false");
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", "?" + new URLSearchParams({ collection: state.collection || "", view: tab.id.slice(4) }));
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => selectTab(t));
    t.addEventListener("keydown", (ev) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[ev.key];
      if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length], true);
    });
  });
}

/* ---------- collections ---------- */
function half(h) {
  if (!h) return el("span", { class: "note", text: "none (`knnrag index PATH --store S --knn` builds one)" });
  const cal = h.calibration || {};
  return el("div", {}, el("div", { text: `${h.live_entries ?? h.entries} entries, LM ${h.lm_id}` }),
    el("div", { class: cal.state === "calibrated" ? "ok" : "note", text: cal.state || "" }),
    el("div", { class: "note", text: cal.summary || "" }));
}

async function loadCollections() {
  const d = await api("/ui/api/collections");
  const sel = $("collection");
  const names = d.collections.map((c) => c.name);
  const want = state.collection && names.includes(state.collection) ? state.collection
    : names.includes("default") ? "default" : names[0] || "default";
  sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (!names.length) sel.append(el("option", { value: "default", text: "default (empty)" }));
  sel.value = want;
  state.collection = want;
  const body = $("collections-table").querySelector("tbody");
  body.replaceChildren(...d.collections.map((c) => el("tr", {},
    el("th", { scope: "row", text: c.name }), el("td", { text: c.chunks }), el("td", { text: c.sources }),
    el("td", { text: `${c.embedder} (${c.dim}-d)` }), el("td", { text: c.index_type }),
    el("td", {}, el("div", { class: c.fusion.state === "calibrated" ? "ok" : "note", text: c.fusion.state }),
      el("div", { class: "note", text: c.fusion.summary })),
    el("td", {}, half(c.knn)), el("td", { id: "verify-" + c.name },
      el("button", { type: "button", class: "link", onclick: () => verifyOne(c.name),
        "aria-label": "verify collection " + c.name + " (reads every file)", text: "run verify" })))));
  $("server-datastore").replaceChildren(d.datastore
    ? el("span", {}, "Server datastore (--datastore, used by the explorer for every collection): ", half(d.datastore)) : "");
}

async function verifyOne(name) {
  const cell = document.getElementById("verify-" + name);
  cell.replaceChildren(el("span", { class: "note", text: "checking every file…" }));
  try {
    const v = await api("/ui/api/verify", { collection: name });
    cell.replaceChildren(el("span", { class: v.ok ? "ok" : "bad", text: v.ok ? "ok" : "DAMAGED" }),
      el("div", { class: "note", text: v.ok ? `generation ${v.generation}, checksums ${v.checksums}` + (v.knn ? `; kNN datastore ${v.knn.checksums}` : "")
        : [...v.problems, ...((v.knn && v.knn.problems) || [])].join("; ") }));
  } catch (e) { cell.replaceChildren(el("span", { class: "bad", text: e.message })); }
}

/* ---------- chunk view ---------- */
async function openChunk(id, range, title) {
  const dlg = $("chunk-dialog"), body = $("chunk-body");
  $("chunk-title").textContent = title || "Chunk";
  body.replaceChildren(el("p", { class: "note", text: "loading…" }));
  if (!dlg.open) dlg.showModal();
  try {
    const d = await api("/ui/api/context", { id, collection: state.collection, before: 2, after: 2 });
    const block = (h, focus) => el("section", { class: "ctx-chunk" + (focus ? " focus" : ""), "aria-current": focus ? "true" : null },
      el("h3", { text: lines(h) + (h.heading ? " — " + h.heading : "") }),
      el("pre", {}, focus ? marked(h.text, [range || [0, h.text.length]], "exact") : h.text));
    body.replaceChildren(...d.before.map((h) => block(h)), block(d.chunk, true), ...d.after.map((h) => block(h)));
    const m = body.querySelector("mark");
    if (m) m.scrollIntoView({ block: "center" });
  } catch (e) { showError(body, e); }
}

/* ---------- search ---------- */
function hitItem(h) {
  const open = () => openChunk(h.id, null, lines(h));
  const scores = Object.entries(h.scores || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ");
  return el("li", { class: "hit", "data-testid": "hit" },
    el("div", { class: "hit-head" },
      el("button", { type: "button", class: "link hit-source", "data-testid": "hit-source", onclick: open,
        "aria-label": "open " + lines(h) + " in its file", text: lines(h) }),
      h.heading ? el("span", { class: "heading-path", text: h.heading }) : null,
      el("span", { class: "scores", text: `score ${fmt(h.score, 4)}` + (scores ? ` (${scores})` : "") })),
    el("p", { class: "hit-text" }, marked(h.text, h.marks)));
}

async function doSearch(ev) {
  ev.preventDefault();
  const tags = $("filter-tags").value.split(",").map((s) => s.trim()).filter(Boolean);
  const filters = {};
  if ($("filter-source").value.trim()) filters.source = $("filter-source").value.trim();
  if ($("filter-kind").value.trim()) filters.kind = $("filter-kind").value.trim();
  if (tags.length) filters.tags = tags;
  const body = { query: $("search-input").value, mode: $("search-mode").value, k: Number($("search-k").value) || 10,
    collection: state.collection };
  if (Object.keys(filters).length) body.filters = filters;
  $("search-note").textContent = "searching…";
  try {
    const t0 = performance.now();
    const d = await api("/ui/api/search", body);
    $("hits").replaceChildren(...d.hits.map(hitItem));
    $("search-note").textContent = `${d.returned} hits in ${Math.round(performance.now() - t0)} ms` + (d.note ? " — " + d.note : "");
    setStatus("");
  } catch (e) { $("hits").replaceChildren(); showError($("search-note"), e); }
}

/* ---------- ask ---------- */
function passageOf(d) {
  /* The answer is an exact passage of a chunk (answer_span); a confident phrase inside it (phrase, with
     chunk offsets) is marked, else the whole copied passage is. A generated answer is shown as is. */
  const ans = String(d.answer || "");
  const p = d.phrase, s = d.answer_span;
  if (p && s && Number.isInteger(p.chunk_start) && Number.isInteger(s.chunk_start)) {
    const a = p.chunk_start - s.chunk_start, b = p.chunk_end - s.chunk_start;
    if (a >= 0 && b > a && b <= ans.length) return { text: ans, mark: [a, b] };
  }
  if (s && s.text === ans && ans) return { text: ans, mark: [0, ans.length] };
  return { text: ans, mark: null };
}

function citationRange(d, c) {
  const s = d.answer_span;
  return s && s.chunk_id === c.chunk_id ? [s.chunk_start, s.chunk_end] : null;
}

async function doAsk(ev) {
  ev.preventDefault();
  const out = $("ask-result");
  out.replaceChildren(el("p", { class: "note", text: "thinking…" }));
  try {
    const d = await api("/ui/api/ask", { question: $("ask-input").value, mode: $("ask-mode").value, collection: state.collection });
    const p = passageOf(d);
    const cites = (d.citations || []).filter((c) => c.cited || !d.citations.some((x) => x.cited));
    out.replaceChildren(el("article", { class: "answer" + (d.grounded ? "" : " not-grounded"), "data-testid": "answer",
      "data-grounded": String(!!d.grounded) },
      el("span", { class: "badge", text: d.grounded ? `answer (${d.mode})` : "not grounded: the sources do not hold an answer" }),
      el("p", { class: "passage" }, p.mark ? marked(p.text, [p.mark], "exact") : p.text),
      d.grounded && p.text !== d.answer ? el("p", { class: "note", text: "Answer: " + d.answer }) : null,
      d.note ? el("p", { class: "note", text: d.note }) : null,
      cites.length ? el("h3", { text: "Sources" }) : null,
      el("ol", { class: "citations" }, ...cites.map((c) => el("li", {},
        el("button", { type: "button", class: "link", "data-testid": "citation", text: `[${c.n}] ${lines(c)}`,
          onclick: () => openChunk(c.chunk_id, citationRange(d, c), `[${c.n}] ${lines(c)}`) }),
        c.heading ? el("span", { class: "heading-path", text: " — " + c.heading }) : null)))));
    setStatus("");
  } catch (e) { showError(out, e); }
}

/* ---------- colours ---------- */
function colour(delta) {
  const a = Math.min(1, Math.abs(delta) / SCALE) * 0.85;
  const rgb = getComputedStyle(document.documentElement).getPropertyValue(delta >= 0 ? "--help" : "--hurt").trim();
  return `rgba(${rgb}, ${a.toFixed(3)})`;
}

/* ---------- explorer ---------- */
function lambdaOf(input) {
  const v = input.value.trim();
  return v === "" ? null : Number(v);
}

async function doExplore(ev) {
  ev.preventDefault();
  const text = $("explorer-input").value, lam = lambdaOf($("explorer-lambda"));
  const box = $("explorer-tokens");
  box.replaceChildren(el("span", { class: "note", text: "scoring…" }));
  $("explorer-summary").replaceChildren();
  $("sweep").replaceChildren();
  state.detailCache.clear();
  try {
    const body = { text, collection: state.collection };
    if (lam !== null) body.lambda = lam;
    const d = await api("/ui/api/explore", body);
    state.explorer = { text, lambda: lam };
    renderTokens(d);
    renderSummary(d.summary);
    $("sweep-button").disabled = !d.summary.datastore;
    $("token-detail").replaceChildren(el("p", { class: "note", text: "Select a token to see why it changed." }));
  } catch (e) { showError(box, e); }
}

function renderTokens(d) {
  const box = $("explorer-tokens"), text = d.text;
  const frag = document.createDocumentFragment();
  frag.append(el("span", { class: "token-context", title: "first token: context only", text: text.slice(0, d.first.end) }));
  let at = d.first.end;
  for (const t of d.tokens) {
    if (t.start > at) frag.append(document.createTextNode(text.slice(at, t.start)));
    const piece = text.slice(Math.max(t.start, at), t.end);
    const s = el("span", { class: "token", "data-testid": "token", "data-delta": t.delta, "data-i": t.i, tabindex: 0,
      role: "button", title: `Δ log p ${t.delta >= 0 ? "+" : ""}${t.delta.toFixed(3)} · λ ${t.lambda}`,
      "aria-label": `token ${piece}, log-probability change ${t.delta.toFixed(2)}, lambda ${t.lambda}`, text: piece });
    s.style.backgroundColor = colour(t.delta);
    s.addEventListener("click", () => showToken(t, s));
    s.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); showToken(t, s); } });
    let timer = null;
    s.addEventListener("mouseenter", () => { timer = setTimeout(() => showToken(t, s), 250); });
    s.addEventListener("mouseleave", () => clearTimeout(timer));
    frag.append(s);
    at = Math.max(at, t.end);
  }
  if (at < text.length) frag.append(document.createTextNode(text.slice(at)));
  box.replaceChildren(frag);
}

function renderSummary(s) {
  const item = (label, value, testid) => el("span", {}, label + " ", el("b", { "data-testid": testid || null, text: value }));
  $("explorer-summary").replaceChildren(...[
    item("base perplexity", fmt(s.base_ppl, 3), "ppl-base"), item("kNN-LM perplexity", fmt(s.knn_ppl, 3), "ppl-knn"),
    item("tokens", s.tokens), item("tokens/s", s.tokens_per_s ?? "—"),
    item("k", s.k), item("T", fmt(s.temperature, 3)), item("λ", s.per_token_lambda ? `per token (base ${s.lambda})` : s.lambda),
    item("datastore", s.datastore ? `${s.entries} entries` : "none"),
    s.calibration ? el("span", { class: "note", text: (s.overridden ? "λ overridden; calibration: " : "calibration: ") + s.calibration }) : null,
    s.note ? el("span", { class: "note", text: s.note }) : null].filter(Boolean));
}

const shown = (tok) => (tok.trim() ? tok : tok.replace(/\n/g, "⏎").replace(/ /g, "␣").replace(/\t/g, "⇥") || "∅");
const prob = (p) => (p === null || p === undefined ? "—" : p >= 0.001 || p === 0 ? Number(p).toFixed(4) : Number(p).toExponential(1));

function topTable(caption, rows) {
  return el("table", {}, el("caption", { text: caption }),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", {}, el("span", { class: "tok", text: shown(r.token) })), el("td", { text: prob(r.prob) })))));
}

async function showToken(t, span) {
  if (!state.explorer) return;
  document.querySelectorAll(".token.selected").forEach((x) => x.classList.remove("selected"));
  span.classList.add("selected");
  const box = $("token-detail");
  let d = state.detailCache.get(t.i);
  if (!d) {
    box.replaceChildren(el("p", { class: "note", text: "loading…" }));
    try {
      const body = { text: state.explorer.text, position: t.i, collection: state.collection };
      if (state.explorer.lambda !== null) body.lambda = state.explorer.lambda;
      d = await api("/ui/api/token", body);
      state.detailCache.set(t.i, d);
    } catch (e) { showError(box, e); return; }
  }
  if (!span.classList.contains("selected")) return;
  const nb = (n) => el("li", { class: "neighbour" + (n.match ? " match" : ""), "data-testid": "neighbour" },
    el("span", { class: "tok", text: shown(n.token) }), ` distance ${fmt(n.distance, 2)} `,
    n.chunk_id ? el("button", { type: "button", class: "link", "data-testid": "neighbour-source", text: `${n.source}:${n.line}`,
      onclick: () => openChunk(n.chunk_id, [n.char, n.char_end], `${n.source}:${n.line}`) })
      : el("span", { "data-testid": "neighbour-source", text: `${n.source}:${n.line}` }),
    el("p", { class: "snippet" }, marked(n.snippet, [n.mark], "exact")));
  box.replaceChildren(el("h3", {}, "Token ", el("span", { class: "tok", text: d.token })),
    el("p", { text: `p base ${prob(d.p_base)} → p kNN-LM ${prob(d.p_knn)}; Δ log p ${t.delta >= 0 ? "+" : ""}${t.delta.toFixed(3)}; λ ${d.lambda}` }),
    el("div", { class: "tops" }, topTable("base LM top 5", d.base_top), topTable("kNN-LM top 5", d.knn_top)),
    el("h3", { text: `Neighbours (${d.neighbours.length}); highlighted: stored token = this token` }),
    d.neighbours.length ? el("ol", { class: "neighbours" }, ...d.neighbours.map(nb))
      : el("p", { class: "note", text: "no datastore search for this token (λ is 0 or there is no datastore)" }));
}

/* ---------- sweep (inline SVG) ---------- */
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = String(text);
  return n;
}

async function doSweep() {
  const box = $("sweep");
  box.replaceChildren(el("p", { class: "note", text: "sweeping k, T and λ on this text…" }));
  try {
    const d = await api("/ui/api/sweep", { text: state.explorer.text, collection: state.collection });
    box.replaceChildren(sweepSvg(d));
  } catch (e) { showError(box, e); }
}

function sweepSvg(d) {
  const W = 640, H = 360, L = 56, R = 150, T = 28, B = 44;
  const best = d.best, pts = d.grid.filter((g) => g.k === best.k);
  const temps = [...new Set(pts.map((g) => g.temperature))].sort((a, b) => a - b);
  const lams = pts.map((g) => g.lambda), lo = Math.min(...d.grid.map((g) => g.ppl)) * 0.98, hi = d.base_ppl * 1.15;
  const x = (v) => L + (v - Math.min(...lams)) / ((Math.max(...lams) - Math.min(...lams)) || 1) * (W - L - R);
  const y = (v) => T + (1 - (Math.min(v, hi) - lo) / ((hi - lo) || 1)) * (H - T - B);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `perplexity against lambda at k=${best.k}`, "data-testid": "sweep-svg" });
  s.append(svg("title", {}, `kNN-LM perplexity vs λ on this text (k=${best.k})`));
  s.append(svg("text", { x: L, y: 18, "font-size": 13 }, `perplexity vs λ at k=${best.k}, one line per temperature`));
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#555" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#555" }));
  for (const v of [...new Set(lams)]) s.append(svg("text", { x: x(v), y: H - B + 14, "font-size": 10, "text-anchor": "middle" }, v));
  for (let i = 0; i <= 4; i++) { const v = lo + (hi - lo) * i / 4; s.append(svg("text", { x: L - 4, y: y(v) + 3, "font-size": 10, "text-anchor": "end" }, v.toFixed(2))); }
  s.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "font-size": 12, "text-anchor": "middle" }, "λ (kNN weight)"));
  s.append(svg("line", { x1: L, y1: y(d.base_ppl), x2: W - R, y2: y(d.base_ppl), stroke: "#888", "stroke-dasharray": "5 4" }));
  temps.forEach((tv, i) => {
    const row = pts.filter((g) => g.temperature === tv).sort((a, b) => a.lambda - b.lambda);
    const hue = Math.round(240 * i / Math.max(1, temps.length - 1));
    s.append(svg("polyline", { points: row.map((g) => `${x(g.lambda)},${y(g.ppl)}`).join(" "), fill: "none", stroke: `hsl(${hue},65%,42%)`, "stroke-width": 1.5 }));
    s.append(svg("text", { x: W - R + 8, y: T + 12 + i * 14, "font-size": 11, fill: `hsl(${hue},65%,42%)` }, `T=${Number(tv).toPrecision(3)}`));
  });
  const n = temps.length;
  s.append(svg("text", { x: W - R + 8, y: T + 16 + n * 14, "font-size": 11, fill: "#666" }, `base ${d.base_ppl.toFixed(2)} (dashed)`));
  s.append(svg("circle", { cx: x(best.lambda), cy: y(best.ppl), r: 5, fill: "#c22" }));
  s.append(svg("text", { x: W - R + 8, y: T + 30 + n * 14, "font-size": 11, fill: "#c22" }, `best ${best.ppl.toFixed(2)} (k=${best.k}, T=${Number(best.temperature).toPrecision(3)}, λ=${best.lambda})`));
  if (d.knn_ppl !== null) {
    s.append(svg("rect", { x: x(d.lambda) - 5, y: y(d.knn_ppl) - 5, width: 10, height: 10, fill: "#111" }));
    s.append(svg("text", { x: W - R + 8, y: T + 44 + n * 14, "font-size": 11 }, `calibrated ${d.knn_ppl.toFixed(2)} (■, λ=${d.lambda})`));
  }
  return s;
}

/* ---------- generate (streamed) ---------- */
async function doGenerate(ev) {
  ev.preventDefault();
  const out = $("generate-output"), sum = $("generate-summary");
  out.replaceChildren();
  sum.textContent = "generating…";
  const body = { prompt: $("generate-input").value, collection: state.collection,
    max_new_tokens: Number($("generate-max").value) || 48 };
  const lam = lambdaOf($("generate-lambda"));
  if (lam !== null) body.lambda = lam;
  if ($("generate-chat").value) body.chat = $("generate-chat").value === "true";
  const ctl = new AbortController();
  state.genAbort = ctl;
  $("generate-stop").disabled = false;
  try {
    const r = await fetch("/ui/api/generate", { method: "POST", headers: headers(true), body: JSON.stringify(body), signal: ctl.signal });
    if (!r.ok) throw await failure(r);
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) { genEvent(JSON.parse(buf.slice(0, nl)), out, sum); buf = buf.slice(nl + 1); }
    }
  } catch (e) {
    if (e.name === "AbortError") sum.textContent = "stopped"; else showError(sum, e);
  } finally { $("generate-stop").disabled = true; state.genAbort = null; }
}

function genEvent(e, out, sum) {
  if (e.type === "token") {
    const s = el("span", { class: "token", "data-testid": "gen-token", "data-delta": e.delta,
      title: `Δ log p ${e.delta >= 0 ? "+" : ""}${e.delta.toFixed(3)} · p ${e.p_base} → ${e.p_knn} · λ ${e.lambda}`, text: e.text });
    s.style.backgroundColor = colour(e.delta);
    out.append(s);
  } else if (e.type === "done") {
    sum.textContent = `${e.tokens} tokens, ${e.tokens_per_s ?? "—"} tokens/s` +
      (e.mixes ? `, kNN-LM k=${e.k} T=${fmt(e.temperature)} λ=${e.lambda}` : ", base LM alone (no datastore or λ = 0)");
  } else if (e.type === "error") {
    sum.replaceChildren(el("span", { class: "error", role: "alert", text: e.error + (e.hint ? " — " + e.hint : "") }));
  }
}

/* ---------- index job with progress ---------- */
async function doIndex(ev) {
  ev.preventDefault();
  const paths = $("index-paths").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const msg = $("index-message"), bar = $("index-progress");
  bar.value = 0;
  try {
    let j = await api("/ui/api/index", { paths, collection: $("index-collection").value || "default", knn: $("index-knn").checked });
    while (true) {
      bar.value = j.percent;
      bar.setAttribute("aria-valuetext", `${j.percent}%: ${j.message}`);
      msg.textContent = `${j.job_id} ${j.state}: ${j.message} (${j.percent}%, ${j.elapsed_seconds} s)`;
      if (["done", "failed", "cancelled"].includes(j.state)) break;
      await new Promise((r) => setTimeout(r, 400));
      j = await api("/ui/api/jobs/" + encodeURIComponent(j.job_id));
    }
    if (j.state === "done" && j.result) {
      const r = j.result;
      msg.textContent = `done: ${r.files_seen} files seen, ${r.added} added, ${r.updated} updated, ${r.removed} removed, ` +
        `${r.chunks_added} chunks added in ${r.seconds} s` + (r.skipped_total ? `; ${r.skipped_total} skipped` : "");
      await loadCollections();
    } else if (j.error) msg.replaceChildren(el("span", { class: "error", text: j.error }));
  } catch (e) { showError(msg, e); }
}

/* ---------- start ---------- */
async function start() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) { sessionStorage.setItem(TOKEN_KEY, hash.get("token")); history.replaceState(null, "", location.pathname + location.search); }
  const q = new URLSearchParams(location.search);
  state.collection = q.get("collection") || null;
  setupTabs();
  const view = document.getElementById("tab-" + (q.get("view") || "search"));
  if (view) selectTab(view);
  $("search-form").addEventListener("submit", doSearch);
  $("ask-form").addEventListener("submit", doAsk);
  $("explorer-form").addEventListener("submit", doExplore);
  $("generate-form").addEventListener("submit", doGenerate);
  $("generate-stop").addEventListener("click", () => state.genAbort && state.genAbort.abort());
  $("index-form").addEventListener("submit", doIndex);
  $("sweep-button").addEventListener("click", doSweep);
  $("chunk-close").addEventListener("click", () => $("chunk-dialog").close());
  $("collection").addEventListener("change", (e) => { state.collection = e.target.value; selectTab(document.querySelector('[aria-selected="true"]')); });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault(); sessionStorage.setItem(TOKEN_KEY, $("token-input").value); $("token-form").hidden = true; boot();
  });
  boot();
}

async function boot() {
  try {
    const info = await api("/ui/api/info");
    $("store-path").textContent = info.store;
    $("roots").textContent = info.allow_roots.length ? "Allowed roots: " + info.allow_roots.join(", ")
      : "No allowed roots: start the page with --allow-root DIR to index from here.";
    await loadCollections();
    setStatus("");
  } catch (e) { setStatus(e.message + (e.hint ? " — " + e.hint : ""), true); }
}

document.addEventListener("DOMContentLoaded", start);
