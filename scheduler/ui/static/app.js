// Berth's dashboard: plain JavaScript, no build step. It polls the compact JSON views under /ui/api/
// (and /debug/explain) and draws the GPU map on one canvas. Text from the cluster is only ever set as
// textContent, never as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2",
    "#edc948", "#ff9da7", "#9c755f", "#8cd17d", "#499894", "#d37295"];
  const CODES = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  const FREE_C = "#ffffff", NO_TEAM_C = "#9aa3ad", UNKNOWN_C = "#5b6470", OTHER_C = "#dde1e6";
  const TILE_C = "#e4e8ee", CORDON_C = "#b9bec6", CPU_C = "#98a9c2";
  const CORDONED = 1, STRANDED = 2, FRAGMENTED = 4;
  const PAD = 6, GAP = 3, HEADER = 18;
  const query = new URLSearchParams(location.search);
  const REFRESH = Math.max(200, Number(query.get("refresh")) || 1000);

  // The page's state; the browser tests and the benchmark read it (window.berth).
  const S = {
    map: null, layout: null, layoutKey: "", etag: "", teamFilter: "", tiles: null, shapes: new Map(),
    drawn: 0, drawnCells: {}, renders: 0, lastRenderMs: 0, updates: 0, mapBytes: 0, tab: "map",
    explain: null, sort: { key: null, asc: false }, teams: null, queue: null, errors: 0,
  };
  window.berth = S;
  // The benchmark's hook: lay out and draw again, returning the milliseconds it took.
  S.redraw = (relayout) => {
    if (relayout) S.tiles = null;
    drawMap();
    return S.lastRenderMs;
  };
  S.nodeCells = (name) => {
    const i = S.layout ? S.layout.names.indexOf(name) : -1;
    return i < 0 ? null : S.map.cells[i];
  };

  const teamColor = (i) => (i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 67) % 360} 55% 55%)`);
  const teamIndex = (name) => (S.map ? S.map.teams.indexOf(name) : -1);
  const fmt = (x) => (x == null ? "–" : Number.isInteger(x) ? String(x) : x.toFixed(x < 10 ? 2 : 1));
  const ago = (s) => (s == null ? "–" : s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells, cls) {
    const tr = el("tr", null, cls);
    for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
    return tr;
  }
  function setStatus(text, bad) {
    const s = $("status");
    s.textContent = text;
    s.style.color = bad ? "#ff8a80" : "";
  }

  async function getJSON(url, init) {
    const r = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" }, ...init });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  // -- GPU map ------------------------------------------------------------------------------------
  async function pollMap() {
    const url = "/ui/api/map" + (S.layoutKey ? `?layout=${encodeURIComponent(S.layoutKey)}` : "");
    const headers = { Accept: "application/json" };
    if (S.etag) headers["If-None-Match"] = S.etag;
    const r = await fetch(url, { cache: "no-store", headers });
    if (r.status === 304) return;
    if (!r.ok) throw new Error(`map: ${r.status} ${(await r.json().catch(() => ({}))).error || ""}`);
    const text = await r.text();
    const data = JSON.parse(text);
    S.mapBytes = text.length;
    S.etag = r.headers.get("ETag") || "";
    if (data.layout) {
      S.layout = data.layout;
      S.layoutKey = data.layoutKey;
      S.shapes.clear();
    }
    S.map = data;
    S.tiles = null;
    S.updates++;
    fillTeamFilter(data.teams);
    legend();
    stats();
    drawMap();
  }

  function fillTeamFilter(teams) {
    const sel = $("team-filter");
    const have = [...sel.options].slice(1).map((o) => o.value).join("\n");
    if (have === teams.join("\n")) return;
    while (sel.options.length > 1) sel.remove(1);
    for (const t of teams) sel.add(new Option(t, t));
    sel.value = teams.includes(S.teamFilter) ? S.teamFilter : "";
  }

  function legend() {
    const box = $("legend");
    if (box.dataset.teams === S.map.teams.join(",")) return;
    box.dataset.teams = S.map.teams.join(",");
    box.replaceChildren();
    const item = (label, color) => {
      const s = el("span", label);
      s.style.setProperty("--c", color);
      box.append(s);
    };
    S.map.teams.forEach((t, i) => item(t, teamColor(i)));
    item("free", FREE_C);
    item("no team", NO_TEAM_C);
    item("held, pod unknown to Berth", UNKNOWN_C);
    item("other teams (filtered)", OTHER_C);
    item("cordoned node", CORDON_C);
    item("stranded: free GPUs, no CPU/memory left (red frame)", "#d32f2f");
    item("fragmented: free GPUs on a partly used node (amber corner)", "#f0a23b");
    item("NVLink island (outline)", "#1d232b");
    item("shared GPU: stacked fractions", "linear-gradient(#4e79a7 50%, #f28e2b 50%)");
  }

  function stats() {
    const s = S.map.stats;
    const n = (k) => s[k] || 0;
    $("map-stats").textContent =
      `${S.map.count} nodes (${n("gpuNodes")} with GPUs) · ${n("gpus")} GPUs, ${n("free")} free ` +
      `(${n("idleNodes")} nodes wholly idle, ${n("fragmented")} fragmented, ${n("stranded")} stranded) · ` +
      `${n("shared")} shared`;
  }

  // Where each cell of a node of this island shape sits in its tile, and the outlines of its islands.
  function shapeOf(shapeIdx, gpus, C) {
    const key = `${shapeIdx}/${gpus}/${C}`;
    let sh = S.shapes.get(key);
    if (sh) return sh;
    const islands = S.layout.shapes[shapeIdx] || [];
    const islandOf = new Array(gpus).fill(-1);
    islands.forEach((isl, k) => isl.forEach((g) => { if (g < gpus) islandOf[g] = k; }));
    const x = [], y = [];
    let gaps = 0, w = 0;
    for (let g = 0; g < gpus; g++) {
      const col = g % 8, r = Math.floor(g / 8);
      if (col === 0) gaps = 0;
      else if (islandOf[g] !== islandOf[g - 1]) gaps++;
      x.push(2 + col * C + gaps * 2);
      y.push(2 + r * C);
      w = Math.max(w, x[g] + C + 2);
    }
    const outlines = [];
    islands.forEach((isl) => {
      const gs = isl.filter((g) => g < gpus);
      if (gs.length < 2) return; // one GPU: no NVLink to outline
      const xs = gs.map((g) => x[g]), ys = gs.map((g) => y[g]);
      outlines.push([Math.min(...xs) - 0.5, Math.min(...ys) - 0.5, Math.max(...xs) + C - Math.min(...xs) + 1, Math.max(...ys) + C - Math.min(...ys) + 1]);
    });
    sh = { x, y, w: Math.max(w, 8 * C + 4), h: 4 + Math.max(1, Math.ceil(gpus / 8)) * C, outlines };
    S.shapes.set(key, sh);
    return sh;
  }

  function cellSize(n) {
    return n > 5000 ? 4 : n > 2000 ? 5 : 7;
  }

  function visible(i, code, pools) {
    if (!S.teamFilter) return true;
    return pools.has(S.map.pools[S.layout.pool[i]]) || S.map.cells[i].includes(code);
  }

  function geometry() {
    const L = S.layout, m = S.map, n = L.names.length, C = cellSize(n);
    const width = Math.max(420, $("map-scroll").clientWidth - 4);
    const code = CODES[teamIndex(S.teamFilter)];
    const pools = new Set(S.teamFilter ? m.teamPools[S.teamFilter] || [] : []);
    const T = { x: new Float32Array(n), y: new Float32Array(n), w: new Float32Array(n), h: new Float32Array(n),
      vis: new Uint8Array(n), headers: [], height: 0, C, code, order: [] };
    const groups = new Map();
    for (let i = 0; i < n; i++) {
      if (!visible(i, code, pools)) continue;
      T.vis[i] = 1;
      T.order.push(i);
      const key = `${L.pool[i]}/${L.model[i]}`;
      const g = groups.get(key) || { nodes: 0, gpus: 0, free: 0 };
      g.nodes++;
      g.gpus += L.gpus[i];
      g.free += (m.cells[i].match(/\./g) || []).length;
      groups.set(key, g);
    }
    let x = PAD, y = PAD, rowH = 0, prev = null;
    for (const i of T.order) {
      const key = `${L.pool[i]}/${L.model[i]}`;
      if (key !== prev) {
        if (prev !== null) y += rowH + GAP + 4;
        const g = groups.get(key);
        const model = L.model[i] >= 0 ? m.models[L.model[i]] : "no GPUs";
        const gpus = L.model[i] >= 0 ? ` · ${g.gpus} GPUs, ${g.free} free` : "";
        T.headers.push([`${m.pools[L.pool[i]]} · ${model} · ${g.nodes} nodes${gpus}`, PAD, y + 12]);
        y += HEADER;
        x = PAD;
        rowH = 0;
        prev = key;
      }
      const sh = L.gpus[i] ? shapeOf(L.islands[i], L.gpus[i], C) : { w: 8 * C + 4, h: C + 4 };
      if (x + sh.w > width - PAD && x > PAD) {
        x = PAD;
        y += rowH + GAP;
        rowH = 0;
      }
      T.x[i] = x; T.y[i] = y; T.w[i] = sh.w; T.h[i] = sh.h;
      x += sh.w + GAP;
      rowH = Math.max(rowH, sh.h);
    }
    T.height = y + rowH + PAD;
    T.width = width;
    S.tiles = T;
  }

  function drawMap() {
    if (!S.map || !S.layout) return;
    const t0 = performance.now();
    if (!S.tiles) geometry();
    const T = S.tiles, L = S.layout, m = S.map, C = T.C;
    const canvas = $("map"), dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(T.width * dpr);
    canvas.height = Math.round(T.height * dpr);
    canvas.style.width = `${T.width}px`;
    canvas.style.height = `${T.height}px`;
    const ctx = canvas.getContext("2d", { alpha: false });
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, T.width, T.height);
    // Rectangles batched by colour: one fill per colour instead of one per cell.
    const batches = new Map();
    const add = (color, x, y, w, h) => {
      let b = batches.get(color);
      if (!b) batches.set(color, (b = []));
      b.push(x, y, w, h);
    };
    const colors = m.teams.map((_, k) => teamColor(k));
    const filterCode = T.code;
    const drawnCells = {};
    const stranded = [], fragmented = [], outlines = [];
    let drawn = 0;
    for (const i of T.order) {
      drawn++;
      const x = T.x[i], y = T.y[i], f = m.flags[i];
      add(f & CORDONED ? CORDON_C : TILE_C, x, y, T.w[i], T.h[i]);
      const cells = m.cells[i];
      if (!cells) { // a node without GPUs: its CPU use as a bar
        add(FREE_C, x + 2, y + 2, T.w[i] - 4, C);
        add(CPU_C, x + 2, y + 2, ((T.w[i] - 4) * m.cpu[i]) / 100, C);
        continue;
      }
      const sh = shapeOf(L.islands[i], L.gpus[i], C);
      for (let g = 0; g < cells.length; g++) {
        const ch = cells[g], cx = x + sh.x[g], cy = y + sh.y[g];
        if (ch === "~") {
          add(FREE_C, cx, cy, C - 1, C - 1);
          let top = 0;
          for (const [team, milli] of (m.shared[i] && m.shared[i][g]) || []) {
            const k = teamIndex(team);
            const h = ((C - 1) * milli) / 1000;
            add(filterCode && CODES[k] !== filterCode ? OTHER_C : k >= 0 ? colors[k] : NO_TEAM_C, cx, cy + top, C - 1, h);
            top += h;
          }
          continue;
        }
        let color = FREE_C;
        if (ch === "-") color = NO_TEAM_C;
        else if (ch === "#") color = UNKNOWN_C;
        else if (ch !== ".") {
          const k = CODES.indexOf(ch);
          if (filterCode && ch !== filterCode) color = OTHER_C;
          else {
            color = k >= 0 ? colors[k] : NO_TEAM_C;
            const name = k >= 0 ? m.teams[k] : "+";
            drawnCells[name] = (drawnCells[name] || 0) + 1;
          }
        }
        add(color, cx, cy, C - 1, C - 1);
      }
      if (C >= 4) for (const o of sh.outlines) outlines.push(x + o[0], y + o[1], o[2], o[3]);
      if (f & STRANDED) stranded.push(x, y, T.w[i], T.h[i]);
      else if (f & FRAGMENTED) fragmented.push(x + T.w[i] - 3, y, 3, 3);
    }
    for (const [color, r] of batches) {
      ctx.fillStyle = color;
      ctx.beginPath();
      for (let k = 0; k < r.length; k += 4) ctx.rect(r[k], r[k + 1], r[k + 2], r[k + 3]);
      ctx.fill();
    }
    ctx.fillStyle = "#f0a23b";
    ctx.beginPath();
    for (let k = 0; k < fragmented.length; k += 4) ctx.rect(fragmented[k], fragmented[k + 1], 3, 3);
    ctx.fill();
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#1d232b99";
    ctx.beginPath();
    for (let k = 0; k < outlines.length; k += 4) ctx.rect(outlines[k], outlines[k + 1], outlines[k + 2], outlines[k + 3]);
    ctx.stroke();
    ctx.strokeStyle = "#d32f2f";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    for (let k = 0; k < stranded.length; k += 4) ctx.rect(stranded[k] + 0.75, stranded[k + 1] + 0.75, stranded[k + 2] - 1.5, stranded[k + 3] - 1.5);
    ctx.stroke();
    ctx.fillStyle = "#1d232b";
    ctx.font = "600 12px system-ui, sans-serif";
    for (const [text, hx, hy] of T.headers) ctx.fillText(text, hx, hy);
    S.drawn = drawn;
    S.drawnCells = drawnCells;
    S.renders++;
    S.lastRenderMs = performance.now() - t0;
    canvas.dataset.drawnTiles = String(drawn);
    canvas.dataset.nodes = String(m.count);
    canvas.dataset.filter = S.teamFilter;
    canvas.dataset.updates = String(S.updates);
  }

  function tileAt(ev) {
    const T = S.tiles;
    if (!T) return -1;
    const r = $("map").getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    for (const i of T.order) {
      if (px >= T.x[i] && px < T.x[i] + T.w[i] && py >= T.y[i] && py < T.y[i] + T.h[i]) return i;
    }
    return -1;
  }

  function describe(i) {
    const L = S.layout, m = S.map, cells = m.cells[i];
    const lines = [L.names[i], `${m.pools[L.pool[i]]} · ${L.model[i] >= 0 ? m.models[L.model[i]] : "no GPUs"}`];
    if (cells) {
      const free = (cells.match(/\./g) || []).length;
      lines.push(`GPUs: ${cells.length - free} of ${cells.length} held, ${free} free`);
      const holders = {};
      for (const ch of cells) {
        const k = CODES.indexOf(ch);
        const who = ch === "." ? null : ch === "~" ? "shared" : ch === "-" ? "no team" : ch === "#" ? "unknown" : m.teams[k] || "+";
        if (who) holders[who] = (holders[who] || 0) + 1;
      }
      for (const [who, count] of Object.entries(holders)) lines.push(`  ${who}: ${count}`);
      const islands = S.layout.shapes[L.islands[i]] || [];
      if (islands.length) lines.push(`NVLink islands: ${islands.map((s) => s.join(",")).join(" | ")}`);
    }
    lines.push(`CPU: ${m.cpu[i]}% requested`);
    const f = m.flags[i];
    if (f & CORDONED) lines.push("cordoned");
    if (f & STRANDED) lines.push("stranded: free GPUs but no CPU, memory or pod slot left");
    if (f & FRAGMENTED) lines.push("fragmented: free GPUs on a partly used node");
    lines.push("click: its pods");
    return lines.join("\n");
  }

  let hoverFrame = 0;
  function onHover(ev) {
    if (hoverFrame) return;
    hoverFrame = requestAnimationFrame(() => {
      hoverFrame = 0;
      const i = tileAt(ev), tip = $("tooltip");
      if (i < 0) { tip.hidden = true; return; }
      tip.textContent = describe(i);
      tip.hidden = false;
      tip.style.left = `${Math.min(ev.clientX + 14, window.innerWidth - 360)}px`;
      tip.style.top = `${ev.clientY + 14}px`;
    });
  }

  async function showNode(name) {
    const panel = $("node-panel");
    if (panel.hidden) {
      panel.hidden = false;
      S.tiles = null; // the map is narrower beside the panel
      drawMap();
    }
    $("node-name").textContent = name;
    const body = $("node-pods").tBodies[0];
    body.replaceChildren();
    try {
      const d = await getJSON(`/ui/api/node?name=${encodeURIComponent(name)}`);
      const n = d.node;
      $("node-facts").textContent = `${n.pool} · ${n.gpuModel || "no GPUs"} · GPUs in use: ${n.gpuIdsUsed || "none"}` +
        ` · free: ${fmt(n.free.cpu / 1000)} cores, ${fmt(n.free.memory / 2 ** 30)} GiB, ${n.free["nvidia.com/gpu"] || 0} GPUs` +
        (n.unschedulable ? " · cordoned" : "");
      for (const p of d.pods) {
        const gpus = p.gpuMilli ? `${p.gpus.join(",")} (${p.gpuMilli / 1000})` : p.gpus.join(",") || "–";
        body.append(row([p.pod, p.team || "–", gpus, fmt(p.cpu), ago(p.heldSeconds)]));
      }
      if (!d.pods.length) body.append(row(["no pods", "", "", "", ""]));
    } catch (e) {
      $("node-facts").textContent = String(e.message || e);
    }
  }

  // -- teams --------------------------------------------------------------------------------------
  async function pollTeams() {
    const d = await getJSON(`/ui/api/teams?window=${$("window").value}`);
    S.teams = d;
    const box = $("teams");
    box.replaceChildren();
    $("teams-note").textContent = d.observedSeconds < d.window
      ? `(Berth has been watching for ${ago(d.observedSeconds)} of that window; GPU-hours are in memory since it started)` : "";
    const cohorts = new Map();
    for (const t of d.teams) {
      const key = t.cohort || "";
      if (!cohorts.has(key)) cohorts.set(key, []);
      cohorts.get(key).push(t);
    }
    for (const [cohort, teams] of cohorts) {
      const sec = el("div", null, "cohort");
      sec.append(el("h2", cohort ? `cohort ${cohort}` : "teams without a cohort"));
      for (const t of teams) sec.append(teamCard(t, d.teams.indexOf(t)));
      box.append(sec);
    }
  }

  function teamCard(t, i) {
    const card = el("div", null, "team");
    card.dataset.team = t.team;
    card.style.setProperty("--c", teamColor(i));
    const h = el("h3");
    h.append(el("i"), el("span", t.team));
    card.append(h);
    card.append(el("div", `pools: ${t.pools.join(", ") || "shared"} · ${t.pods} pods · ${fmt(t.gpuHours)} GPU-hours`, "meta"));
    if (t.error) card.append(el("div", t.error, "error"));
    for (const r of t.resources) card.append(bar(r));
    return card;
  }

  function bar(r) {
    const wrap = el("div", null, "bar-row");
    const label = el("span", r.model ? `GPU ${r.model}` : r.resource, "label");
    label.title = r.resource;
    wrap.append(label);
    if (r.guaranteed == null && r.max == null) { // no quota on it: nothing to measure a bar against
      wrap.append(el("span", `used ${fmt(r.used)} ${r.unit} (no quota)`, "bar-text"));
      return wrap;
    }
    const b = el("div", null, "bar");
    const scale = Math.max(r.max || 0, r.used || 0, r.guaranteed || 0) * 1.05 || 1;
    const pct = (x) => `${(100 * x) / scale}%`;
    const own = r.guaranteed == null ? r.used : Math.min(r.used, r.guaranteed);
    const used = el("div", null, "used");
    used.style.width = pct(own);
    b.append(used);
    if (r.borrowed > 0) {
      const br = el("div", null, "borrowed");
      br.style.left = pct(own);
      br.style.width = pct(r.borrowed);
      b.append(br);
    }
    for (const [v, cls] of [[r.guaranteed, "g"], [r.max, "m"]]) {
      if (v == null) continue;
      const mark = el("div", null, `mark ${cls}`);
      mark.style.left = `calc(${pct(v)} - 1px)`;
      mark.title = cls === "g" ? "guaranteed" : "max";
      b.append(mark);
    }
    wrap.append(b);
    wrap.append(el("span", `used ${fmt(r.used)} · guaranteed ${fmt(r.guaranteed)} · max ${fmt(r.max)} · borrowed ${fmt(r.borrowed)} ${r.unit}`, "bar-text"));
    return wrap;
  }

  // -- queue --------------------------------------------------------------------------------------
  async function pollQueue() {
    const d = await getJSON("/ui/api/queue");
    S.queue = d;
    $("queue-policy").textContent = d.admission ? `${d.policy} · ${d.holds} held members · ${d.plans} planned pods`
      : "admission is off (admission.enabled): no gangs are queued";
    const gangs = $("gangs").tBodies[0];
    gangs.replaceChildren();
    for (const g of d.gangs) {
      const plan = Object.entries(g.plan).map(([p, n]) => `${p} → ${n}`).join("\n") || "–";
      gangs.append(row([g.position, g.gang, g.phase, g.reason || "–", `${g.members}/${g.minMember || "?"}`, g.bound, g.priority, ago(g.waitSeconds), plan]));
    }
    if (!d.gangs.length) gangs.append(row(["", "no gangs waiting", "", "", "", "", "", "", ""]));
    $("waiting-count").textContent = `${d.waitingCount} pods sent to filter and not bound (highest priority, then longest waiting, first)`;
    const body = $("waiting").tBodies[0];
    body.replaceChildren();
    for (const p of d.waiting) {
      const btn = el("button", "explain");
      btn.addEventListener("click", () => explainPod(p.namespace, p.name));
      const td = el("td");
      td.append(btn);
      body.append(row([p.pod, p.team || "–", p.priority, fmt(p.gpus), ago(p.waitSeconds), p.reason || "–", td]));
    }
  }

  // -- explain ------------------------------------------------------------------------------------
  function explainPod(ns, name) {
    $("explain-ns").value = ns;
    $("explain-pod").value = name;
    location.hash = "explain";
    runExplain();
  }

  async function runExplain(body) {
    $("explain-summary").textContent = "explaining…";
    try {
      const url = `/debug/explain?namespace=${encodeURIComponent($("explain-ns").value)}&pod=${encodeURIComponent($("explain-pod").value)}`;
      S.explain = body
        ? await getJSON("/debug/explain", { method: "POST", body, headers: { Accept: "application/json", "Content-Type": "application/yaml" } })
        : await getJSON(url);
      S.sort = { key: null, asc: false };
      renderExplain();
    } catch (e) {
      S.explain = null;
      $("explain-summary").textContent = String(e.message || e);
      $("explain-summary").className = "error";
      $("explain-table").tHead.replaceChildren();
      $("explain-table").tBodies[0].replaceChildren();
    }
  }

  const EXPLAIN_ROWS = 500;
  function renderExplain() {
    const d = S.explain;
    const fits = d.nodes.filter((n) => n.fits);
    const winner = fits.reduce((best, n) => (best && best.score >= n.score ? best : n), null);
    const summary = $("explain-summary");
    summary.className = "";
    summary.textContent = `${d.pod}: team ${d.team || "none"}${d.borrowing ? " (borrowing)" : ""} · fits ${fits.length} of ${d.nodes.length} nodes` +
      (winner ? ` · best: ${winner.node} (score ${winner.score})` : "") + (d.quota ? ` · quota: ${d.quota}` : "") +
      (d.boundTo ? ` · bound to ${d.boundTo}` : "");
    const parts = [...new Set(d.nodes.flatMap((n) => Object.keys(n.parts || {})))];
    const cols = [["node", (n) => n.node], ["fits", (n) => (n.fits ? 1 : 0)], ["score", (n) => n.score ?? -1],
      ...parts.map((p) => [p, (n) => (n.parts ? n.parts[p] ?? 0 : -1)]), ["reason", (n) => n.reason || ""]];
    const head = $("explain-table").tHead;
    head.replaceChildren();
    const tr = el("tr");
    for (const [key] of cols) {
      const th = el("th", key);
      if (S.sort.key === key) th.className = S.sort.asc ? "sorted asc" : "sorted";
      th.addEventListener("click", () => {
        S.sort = { key, asc: S.sort.key === key ? !S.sort.asc : key === "node" || key === "reason" };
        renderExplain();
      });
      tr.append(th);
    }
    head.append(tr);
    let rows = d.nodes;
    if (S.sort.key) {
      const get = cols.find((c) => c[0] === S.sort.key)[1];
      rows = [...rows].sort((a, b) => {
        const x = get(a), y = get(b);
        const c = x < y ? -1 : x > y ? 1 : 0;
        return S.sort.asc ? c : -c;
      });
    }
    const body = $("explain-table").tBodies[0];
    body.replaceChildren();
    for (const n of rows.slice(0, EXPLAIN_ROWS)) {
      const cells = cols.map(([key, get]) => {
        const v = key === "fits" ? (n.fits ? "yes" : "no") : key === "score" ? (n.fits ? n.score : "") : get(n);
        const td = el("td", key !== "node" && key !== "reason" && !n.fits && key !== "fits" ? "" : v);
        if (typeof v === "number") td.className = "num";
        return td;
      });
      const r = row(cells, n === winner ? "winner" : n.fits ? "" : "nofit");
      r.dataset.node = n.node;
      body.append(r);
    }
    if (rows.length > EXPLAIN_ROWS) body.append(row([`… ${rows.length - EXPLAIN_ROWS} more nodes (sort to see others)`]));
  }

  // -- tabs and the refresh loop ------------------------------------------------------------------
  function showTab() {
    const [tab, args] = (location.hash.slice(1) || "map").split("?");
    S.tab = ["map", "teams", "queue", "explain"].includes(tab) ? tab : "map";
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === S.tab);
    for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${S.tab}`;
    if (S.tab === "explain" && args) {
      const p = new URLSearchParams(args);
      if (p.get("pod")) {
        $("explain-ns").value = p.get("namespace") || "default";
        $("explain-pod").value = p.get("pod");
        runExplain();
      }
    }
    if (S.tab === "map") { S.tiles = null; drawMap(); }
    tick(true);
  }

  let ticks = 0, timer = 0, busy = false;
  async function tick(now) {
    clearTimeout(timer);
    if (busy) { timer = setTimeout(tick, REFRESH); return; }
    if (document.hidden && S.map && !now) { // a background tab asks the server for nothing
      timer = setTimeout(tick, REFRESH);
      return;
    }
    busy = true;
    try {
      if (S.tab === "map" || !S.map) await pollMap();
      if (S.tab === "teams" && (now || ticks % 5 === 0)) await pollTeams();
      if (S.tab === "queue" && (now || ticks % 2 === 0)) await pollQueue();
      setStatus(`${S.map ? S.map.count : 0} nodes · updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      S.errors++;
      setStatus(`cannot refresh: ${e.message || e}`, true);
    } finally {
      busy = false;
      ticks++;
      timer = setTimeout(tick, REFRESH);
    }
  }

  function init() {
    const canvas = $("map");
    canvas.addEventListener("mousemove", onHover);
    canvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    canvas.addEventListener("click", (ev) => {
      const i = tileAt(ev);
      if (i >= 0) showNode(S.layout.names[i]);
    });
    $("node-close").addEventListener("click", () => { $("node-panel").hidden = true; S.tiles = null; drawMap(); });
    $("team-filter").addEventListener("change", (ev) => {
      S.teamFilter = ev.target.value;
      S.tiles = null;
      drawMap();
    });
    $("window").addEventListener("change", () => pollTeams().catch((e) => setStatus(String(e.message || e), true)));
    $("explain-form").addEventListener("submit", (ev) => { ev.preventDefault(); runExplain(); });
    $("explain-post").addEventListener("click", () => runExplain($("explain-body").value));
    let resize = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => { S.tiles = null; drawMap(); }, 100);
    });
    window.addEventListener("hashchange", showTab);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(true); });
    showTab();
  }

  init();
})();
