// Draws the report's canvases from the data inlined in the page (llamacpu/inspect/html.py).
// No libraries and no network: plain canvas 2D. window.llamacpu exposes the data for tests and readers.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("llamacpu-data").textContent);

  // {dtype, shape, b64} -> typed array (little-endian, as every browser platform is); uint8 entries
  // were quantized with a scale and come back as Float32Array values.
  function decode(entry) {
    const bin = atob(entry.b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    if (entry.dtype === "float32") return new Float32Array(bytes.buffer);
    if (entry.dtype === "int32") return new Int32Array(bytes.buffer);
    const out = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] * entry.scale;
    return out;
  }

  const M = data.model, L = M.layers, H = M.heads, T = data.tokens.length;
  const attention = decode(data.attention);           // [L, H, T, T]
  const entropy = decode(data.entropy);               // [L, H]
  const resid = decode(data.residual_norm);           // [L + 1, T]
  const attnUpd = decode(data.attn_update);           // [L, T]
  const mlpUpd = decode(data.mlp_update);             // [L, T]
  const labels = data.tokens.map(t => t.pad ? "<pad>" : t.text);
  const real = data.mask.map(m => m !== 0);
  const state = { layer: 0, head: 0, pos: T - 1 };

  // viridis, as a polynomial fit (Matt Zucker's, public domain): t in [0, 1] -> [r, g, b] in 0..255
  const C = [[0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055260068105],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832]];
  function viridis(t) {
    t = Math.min(1, Math.max(0, t));
    return [0, 1, 2].map(c => {
      let v = C[6][c];
      for (let i = 5; i >= 0; i--) v = C[i][c] + t * v;
      return Math.round(255 * Math.min(1, Math.max(0, v)));
    });
  }
  const rgb = t => { const [r, g, b] = viridis(t); return `rgb(${r},${g},${b})`; };

  function setup(canvas, w, h) {  // a canvas of w x h CSS pixels, sharp on high-DPI screens
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }
  const prob = (l, h, q, k) => attention[((l * H + h) * T + q) * T + k];
  const allowed = (q, k) => k <= q && real[k] && real[q];
  const short = s => s.length > 14 ? s.slice(0, 13) + "…" : s;

  // ---- attention: thumbnails (head selector), the selected head's heatmap, colour bar, entropy grid ----
  function drawMatrix(ctx, l, h, x0, y0, cell) {
    for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
      const x = x0 + k * cell, y = y0 + q * cell;
      if (!allowed(q, k)) {
        ctx.fillStyle = "#eceef1"; ctx.fillRect(x, y, cell, cell);
        if (cell >= 6) {
          ctx.strokeStyle = "#c9ced6"; ctx.lineWidth = 1; ctx.beginPath();
          ctx.moveTo(x, y + cell); ctx.lineTo(x + cell, y); ctx.stroke();
        }
      } else {
        ctx.fillStyle = rgb(prob(l, h, q, k)); ctx.fillRect(x, y, cell + 0.5, cell + 0.5);
      }
    }
  }

  function drawHeads() {
    const box = document.getElementById("heads");
    box.textContent = "";
    const size = Math.max(48, Math.min(96, Math.floor(900 / H) - 10));
    for (let h = 0; h < H; h++) {
      const fig = document.createElement("figure");
      fig.className = h === state.head ? "selected" : "";
      fig.dataset.head = h;
      const c = document.createElement("canvas");
      drawMatrix(setup(c, size, size), state.layer, h, 0, 0, size / T);
      const cap = document.createElement("figcaption");
      cap.textContent = `head ${h}`;
      fig.append(c, cap);
      fig.addEventListener("click", () => select({ head: h }));
      box.append(fig);
    }
  }

  let heat = null;  // geometry of the big heatmap, for the tooltip
  function drawHeatmap() {
    const canvas = document.getElementById("heatmap");
    const cell = Math.max(6, Math.min(36, Math.floor(560 / T)));
    const probe = canvas.getContext("2d");
    probe.font = "11px sans-serif";
    const margin = 12 + Math.max(...labels.map(s => probe.measureText(short(s)).width));
    const every = Math.ceil(13 / cell);  // label every n-th token when cells are smaller than the text
    const w = margin + T * cell + 8, h = margin + T * cell + 8;
    const ctx = setup(canvas, w, h);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
    drawMatrix(ctx, state.layer, state.head, margin, margin, cell);
    ctx.fillStyle = "#1d2330"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    for (let i = 0; i < T; i += every) {
      const bold = i === state.pos;
      ctx.font = (bold ? "bold " : "") + "11px sans-serif";
      ctx.textAlign = "right";
      ctx.fillText(short(labels[i]), margin - 6, margin + (i + 0.5) * cell);  // queries down the side
      ctx.save();
      ctx.translate(margin + (i + 0.5) * cell, margin - 6);
      ctx.rotate(-Math.PI / 2); ctx.textAlign = "left";
      ctx.fillText(short(labels[i]), 0, 0);  // keys across the top
      ctx.restore();
    }
    heat = { margin, cell };
    document.getElementById("head-label").textContent =
      `layer ${state.layer}, head ${state.head} (reads key/value head ${Math.floor(state.head / (H / M.kv_heads))}): ` +
      `query tokens down, key tokens across`;
  }

  function drawColorbar() {
    const canvas = document.getElementById("colorbar");
    const h = 260, ctx = setup(canvas, 56, h + 20);
    for (let y = 0; y < h; y++) { ctx.fillStyle = rgb(1 - y / (h - 1)); ctx.fillRect(4, 10 + y, 16, 1); }
    ctx.strokeStyle = "#888"; ctx.strokeRect(4, 10, 16, h);
    ctx.fillStyle = "#1d2330"; ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    for (const v of [0, 0.25, 0.5, 0.75, 1]) ctx.fillText(v.toFixed(2), 24, 10 + (1 - v) * (h - 1));
  }

  let ent = null;
  function drawEntropy() {
    const canvas = document.getElementById("entropy");
    const cw = Math.max(14, Math.min(28, Math.floor(300 / H))), ch = Math.max(8, Math.min(18, Math.floor(420 / L)));
    const left = 56, top = 16, ctx = setup(canvas, left + H * cw + 4, top + L * ch + 4);
    const maxBits = Math.log2(Math.max(2, real.filter(Boolean).length));
    ctx.font = "10px sans-serif"; ctx.fillStyle = "#5b6472"; ctx.textBaseline = "middle";
    for (let l = 0; l < L; l++) {
      if (l % Math.ceil(10 / ch) === 0) { ctx.textAlign = "right"; ctx.fillText(`layer ${l}`, left - 4, top + (l + 0.5) * ch); }
      for (let h = 0; h < H; h++) {
        ctx.fillStyle = rgb(entropy[l * H + h] / maxBits);
        ctx.fillRect(left + h * cw, top + l * ch, cw - 1, ch - 1);
      }
      ctx.fillStyle = "#5b6472";
    }
    ctx.textAlign = "center";
    for (let h = 0; h < H; h++) ctx.fillText(`${h}`, left + (h + 0.5) * cw, top - 8);
    ctx.strokeStyle = "#e4813b"; ctx.lineWidth = 2;
    ctx.strokeRect(left + state.head * cw, top + state.layer * ch, cw - 1, ch - 1);
    ent = { left, top, cw, ch, maxBits };
  }

  // ---- the residual stream at the selected token ----
  function drawResidual() {
    const canvas = document.getElementById("residual-chart");
    const w = canvas.parentElement.clientWidth - 40 || 900, h = 260;
    const ctx = setup(canvas, w, h);
    const p = state.pos, left = 48, bottom = 28, top = 10;
    const values = [];
    for (let i = 0; i <= L; i++) values.push(resid[i * T + p]);
    for (let i = 0; i < L; i++) values.push(attnUpd[i * T + p], mlpUpd[i * T + p]);
    const max = Math.max(...values.filter(Number.isFinite), 1e-6);
    const step = Math.pow(10, Math.floor(Math.log10(max / 4)));
    const tick = [1, 2, 5, 10].map(m => m * step).find(t => max / t <= 5);
    const y = v => top + (h - top - bottom) * (1 - v / (Math.ceil(max / tick) * tick));
    ctx.font = "11px sans-serif"; ctx.fillStyle = "#5b6472"; ctx.strokeStyle = "#e6e9ee"; ctx.textBaseline = "middle";
    for (let v = 0; v <= Math.ceil(max / tick) * tick + 1e-9; v += tick) {
      ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w, y(v)); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(+v.toPrecision(3) + "", left - 6, y(v));
    }
    const gw = (w - left) / (L + 1), bw = Math.max(1, gw / 3.6);
    ctx.textAlign = "center";
    for (let g = 0; g <= L; g++) {
      const x = left + g * gw + (gw - 3 * bw) / 2;
      const bars = [[resid[g * T + p], "#31688e"]];
      if (g > 0) bars.push([attnUpd[(g - 1) * T + p], "#e4813b"], [mlpUpd[(g - 1) * T + p], "#35b779"]);
      bars.forEach(([v, c], j) => { ctx.fillStyle = c; ctx.fillRect(x + j * bw, y(v), bw - 1, y(0) - y(v)); });
      if (g % Math.ceil(28 / gw) === 0) { ctx.fillStyle = "#5b6472"; ctx.fillText(g === 0 ? "emb" : `${g - 1}`, left + (g + 0.5) * gw, h - bottom + 12); }
    }
    ctx.fillText("layer", left + (w - left) / 2, h - 6);
    document.getElementById("residual-token").textContent = `${JSON.stringify(labels[p])} (position ${p})`;
  }

  function select(change) {
    Object.assign(state, change);
    document.getElementById("layer").value = state.layer;
    document.getElementById("layer-out").textContent = state.layer;
    document.querySelectorAll(".tokens .tok, #lens thead th[data-pos]").forEach(el =>
      el.classList.toggle("selected", +el.dataset.pos === state.pos));
    drawHeads(); drawHeatmap(); drawEntropy(); drawResidual();
  }

  // ---- interaction ----
  const tip = document.getElementById("tooltip");
  function showTip(ev, text) { tip.hidden = false; tip.textContent = text; tip.style.left = ev.clientX + 14 + "px"; tip.style.top = ev.clientY + 14 + "px"; }
  document.getElementById("heatmap").addEventListener("mousemove", ev => {
    const r = ev.target.getBoundingClientRect();
    const k = Math.floor((ev.clientX - r.left - heat.margin) / heat.cell), q = Math.floor((ev.clientY - r.top - heat.margin) / heat.cell);
    if (q < 0 || k < 0 || q >= T || k >= T) { tip.hidden = true; return; }
    showTip(ev, `query ${JSON.stringify(labels[q])} (${q}) → key ${JSON.stringify(labels[k])} (${k})\n` +
      (allowed(q, k) ? `p = ${prob(state.layer, state.head, q, k).toFixed(4)}` : "masked"));
  });
  document.getElementById("entropy").addEventListener("mousemove", ev => {
    const r = ev.target.getBoundingClientRect();
    const h = Math.floor((ev.clientX - r.left - ent.left) / ent.cw), l = Math.floor((ev.clientY - r.top - ent.top) / ent.ch);
    if (h < 0 || l < 0 || h >= H || l >= L) { tip.hidden = true; return; }
    showTip(ev, `layer ${l} head ${h}: ${entropy[l * H + h].toFixed(2)} bits (max ${ent.maxBits.toFixed(2)})`);
  });
  document.getElementById("entropy").addEventListener("click", ev => {
    const r = ev.target.getBoundingClientRect();
    const h = Math.floor((ev.clientX - r.left - ent.left) / ent.cw), l = Math.floor((ev.clientY - r.top - ent.top) / ent.ch);
    if (h >= 0 && l >= 0 && h < H && l < L) select({ layer: l, head: h });
  });
  for (const id of ["heatmap", "entropy"]) document.getElementById(id).addEventListener("mouseleave", () => { tip.hidden = true; });
  document.getElementById("layer").addEventListener("input", ev => select({ layer: +ev.target.value }));
  document.querySelectorAll(".tokens .tok").forEach(el => el.addEventListener("click", () => select({ pos: +el.dataset.pos })));
  window.addEventListener("resize", drawResidual);

  drawColorbar();
  select({});
  window.llamacpu = { data, decode, state, select };
})();
