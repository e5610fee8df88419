// hovernet view: the slide (OpenSeadragon tiles) with the nuclei of a slide-mode store drawn on a
// canvas above it. Outlines come from /nuclei for the viewport, a heat map from /density when
// zoomed out. The view (slide, centre, zoom, colouring, overlay, hidden classes) lives in the
// URL hash, so a link reopens it. window.hovernetView reports the state to tests.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
    "#6ece58", "#b5de2b", "#fde725"];
  const HEAT = ["#ffffb2", "#fed976", "#feb24c", "#fd8d3c", "#f03b20", "#bd0026"];
  const MIN_OUTLINE_SCALE = 0.25; // screen px per store px below which auto shows the heat map
  const BINS = 32; // colour steps when colouring by a measurement
  const NAVIGATOR_RATIO = 0.18; // the overview's width and height, share of the viewer's
  const HALO_BELOW = 0.4; // relative luminance under which an outline gets a light halo

  const state = { slide: null, x: null, y: null, z: null, colour: "class", overlay: "auto",
    hide: new Set(), heat: "all" };
  const view = window.hovernetView = { mode: null, pending: 0, tilesLoaded: false, drawn: 0,
    dataKey: null, viewKey: null, error: null, nuclei: 0, truncated: false,
    idle() { return this.tilesLoaded && this.pending === 0 && this.dataKey === this.viewKey; } };
  let info = null, density = null, heatCanvas = null, nuclei = null, viewer = null;
  let canvas = null, selected = null, selectedKey = null, fetchTimer = null, controller = null;

  // -- helpers ---------------------------------------------------------------------------------
  function lut(stops) {
    const rgb = stops.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)));
    return (t) => {
      const f = Math.min(Math.max(t, 0), 1) * (rgb.length - 1);
      const i = Math.min(Math.floor(f), rgb.length - 2), u = f - i;
      return rgb[i].map((c, k) => Math.round(c + (rgb[i + 1][k] - c) * u));
    };
  }
  const viridis = lut(VIRIDIS), heat = lut(HEAT);
  const css = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
  function luminance(text) { // relative luminance (WCAG) of "rgb(r,g,b)"
    const lin = text.match(/\d+/g).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  }
  const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" :
    String(Number(Number(v).toPrecision(d))));
  async function getJSON(url, signal) {
    const r = await fetch(url, { signal });
    const doc = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
    if (!r.ok) throw new Error(doc.error || `${r.status}`);
    return doc;
  }
  function decode(b64, Type) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Type(bytes.buffer);
  }
  const api = (path) => `/api/slides/${encodeURIComponent(state.slide)}${path}`;
  function status(text) { $("status").textContent = text; }

  // -- URL hash --------------------------------------------------------------------------------
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.slide = p.get("slide");
    for (const k of ["x", "y", "z"]) state[k] = p.has(k) ? Number(p.get(k)) : null;
    state.colour = p.get("colour") || "class";
    state.overlay = p.get("overlay") || "auto";
    state.hide = new Set((p.get("hide") || "").split(",").filter(Boolean));
    state.heat = p.get("heat") || "all"; // the heat map's one class, or all shown classes
  }
  function writeHash() {
    const p = new URLSearchParams({ slide: state.slide });
    if (state.z) {
      p.set("x", state.x.toFixed(1)); p.set("y", state.y.toFixed(1));
      p.set("z", Number(state.z.toPrecision(4)));
    }
    if (state.colour !== "class") p.set("colour", state.colour);
    if (state.overlay !== "auto") p.set("overlay", state.overlay);
    if (state.hide.size) p.set("hide", [...state.hide].join(","));
    if (state.heat !== "all") p.set("heat", state.heat);
    history.replaceState(null, "", "#" + p.toString());
  }

  // -- the slide list --------------------------------------------------------------------------
  async function start() {
    readHash();
    const slides = await getJSON("/api/slides");
    if (!state.slide && slides.length === 1) state.slide = slides[0].name;
    if (!state.slide) return showList(slides);
    $("back").hidden = slides.length === 1;
    await openSlide();
  }
  function showList(slides) {
    $("list").hidden = false;
    for (const s of slides) {
      const row = $("slides").insertRow();
      const a = document.createElement("a");
      a.href = "#" + new URLSearchParams({ slide: s.name });
      a.textContent = s.name;
      row.insertCell().append(a);
      row.insertCell().textContent = s.dimensions.join(" x ");
      row.insertCell().textContent = fmt(s.mpp, 3);
      row.insertCell().textContent = s.nuclei.toLocaleString("en");
    }
  }
  window.addEventListener("hashchange", () => {
    const before = state.slide;
    readHash();
    if (state.slide !== before) location.reload();
    else if (viewer) {
      $("heat-class").value = state.heat; heatCanvas = null; applyView(); changed();
    }
  });

  // -- the viewer ------------------------------------------------------------------------------
  async function openSlide() {
    [info, density] = await Promise.all([getJSON(api("")), getJSON(api("/density"))]);
    density.data = decode(density.counts, density.dtype === "uint16" ? Uint16Array : Uint32Array);
    window.hovernetInfo = info;
    $("app").hidden = false;
    $("title").textContent = info.name;
    $("subtitle").textContent = `${info.dimensions.join(" x ")} px, ${fmt(info.mpp, 3)} µm/px, ` +
      `${info.nuclei.toLocaleString("en")} nuclei`;
    document.title = `${info.name} – hovernet view`;
    buildLegend();
    buildHeatClasses();
    $("colour-by").value = state.colour;
    $("overlay").value = state.overlay;
    viewer = OpenSeadragon({
      element: $("osd"), prefixUrl: "/static/openseadragon/images/", drawer: "canvas",
      showNavigator: true, navigatorPosition: "TOP_RIGHT", navigatorAutoFade: false,
      // a fixed share of the viewer, also after the window shrinks (OpenSeadragon's default
      // keeps the navigator's area, so a window made smaller is mostly navigator)
      navigatorSizeRatio: NAVIGATOR_RATIO, navigatorMaintainSizeRatio: true,
      visibilityRatio: 0.2,
      maxZoomPixelRatio: 8, gestureSettingsMouse: { clickToZoom: false },
      tileSources: { width: info.dimensions[0], height: info.dimensions[1],
        tileSize: info.tile_size, tileOverlap: 0, minLevel: 0, maxLevel: info.max_level,
        getTileUrl: (l, x, y) => api(`/tiles/${l}/${x}_${y}.jpg`) },
    });
    view.viewer = viewer;
    canvas = document.createElement("canvas");
    canvas.id = "overlay-canvas";
    viewer.canvas.append(canvas);
    viewer.addHandler("open", () => {
      const item = viewer.world.getItemAt(0);
      view.tilesLoaded = item.getFullyLoaded();
      item.addHandler("fully-loaded-change", (e) => { view.tilesLoaded = e.fullyLoaded; });
      applyView();
      changed();
    });
    viewer.addHandler("update-viewport", draw);
    viewer.addHandler("resize", draw);
    viewer.addHandler("animation-finish", changed);
    viewer.addHandler("canvas-click", (e) => { if (e.quick) pick(e.position); });
    $("colour-by").onchange = (e) => { state.colour = e.target.value; writeHash(); draw(); };
    $("overlay").onchange = (e) => { state.overlay = e.target.value; changed(); };
    $("heat-class").onchange = (e) => { state.heat = e.target.value; heatCanvas = null; changed(); };
    $("download").onclick = download;
  }
  function applyView() {
    if (state.z === null || state.x === null || state.y === null) return;
    const vp = viewer.viewport;
    vp.zoomTo(vp.imageToViewportZoom(state.z), null, true);
    vp.panTo(vp.imageToViewportCoordinates(state.x, state.y), true);
  }
  function viewBox() { // the visible part of the slide, level-0 px
    const vp = viewer.viewport;
    const r = vp.viewportToImageRectangle(vp.getBounds(true));
    return [r.x, r.y, r.x + r.width, r.y + r.height];
  }
  function clipped(box) { // box clipped to the slide as the bbox text sent and its numbers
    const [w, h] = info.dimensions;
    const c = [Math.max(0, box[0]), Math.max(0, box[1]), Math.min(w, box[2]), Math.min(h, box[3])]
      .map((v) => v.toFixed(1));
    const numbers = c.map(Number);
    if (numbers[2] <= numbers[0] || numbers[3] <= numbers[1]) return null;
    return { text: c.join(","), box: numbers };
  }
  function padded(box, share) {
    const px = (box[2] - box[0]) * share, py = (box[3] - box[1]) * share;
    return [box[0] - px, box[1] - py, box[2] + px, box[3] + py];
  }
  function zoom() { return viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true)); }

  // -- legend and colours ----------------------------------------------------------------------
  function buildLegend() {
    $("legend").replaceChildren();
    for (const c of info.classes) {
      const li = document.createElement("li");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = !state.hide.has(c.key); box.dataset.key = c.key;
      box.onchange = () => {
        if (box.checked) state.hide.delete(c.key); else state.hide.add(c.key);
        if (selectedKey === c.key && !box.checked) clearSelection();
        heatCanvas = null; changed();
      };
      const sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = css(c.colour);
      const name = document.createElement("span"); name.textContent = c.name;
      const n = document.createElement("span");
      n.className = "count"; n.textContent = c.count.toLocaleString("en");
      const label = document.createElement("label");
      label.style.display = "contents"; label.append(box, sw, name, n);
      li.append(label);
      $("legend").append(li);
    }
  }
  function buildHeatClasses() { // "all shown classes", then each class by name
    for (const c of info.classes) {
      const option = document.createElement("option");
      option.value = c.key; option.textContent = c.name;
      $("heat-class").append(option);
    }
    if (!info.classes.some((c) => c.key === state.heat)) state.heat = "all";
    $("heat-class").value = state.heat;
  }
  const heatName = () => (info.classes.find((c) => c.key === state.heat) || {}).name;
  // whether class `key` counts in the heat map: the chosen one, or every shown class
  const inHeat = (key) => (state.heat === "all" ? !state.hide.has(key) : key === state.heat);
  function colourBar() { // the measurement's colours, or the heat map's density scale
    const isHeat = view.mode === "heatmap" && heatCanvas;
    const on = isHeat || (state.colour !== "class" && view.mode === "outlines");
    $("colourbar").hidden = !on;
    if (!on) return;
    const cb = $("colourbar-canvas"), g = cb.getContext("2d"), map = isHeat ? heat : viridis;
    for (let i = 0; i < cb.width; i++) {
      g.fillStyle = css(map(i / (cb.width - 1))); g.fillRect(i, 0, 1, cb.height);
    }
    $("colourbar-title").textContent = isHeat ?
      (state.heat === "all" ? "nuclei density" : `${heatName()} density`) :
      $("colour-by").selectedOptions[0].textContent;
    if (isHeat) {
      const mm2 = (density.cell * info.um_per_px / 1000) ** 2;
      $("colourbar-min").textContent = "0";
      $("colourbar-max").textContent = info.um_per_px ?
        `${Math.round(heatCanvas.top / mm2).toLocaleString("en")} nuclei/mm²` : "most";
      return;
    }
    const [lo, hi] = info.ranges[state.colour];
    $("colourbar-min").textContent = fmt(lo); $("colourbar-max").textContent = fmt(hi);
  }
  // packed answers carry untyped nuclei as type -1
  const classByType = () => new Map(info.classes.map((c) => [c.type === null ? -1 : c.type, c]));
  const visibleTypes = () => info.classes.filter((c) => !state.hide.has(c.key));
  const typesParam = () => (state.hide.size ? "&types=" + visibleTypes().map((c) => c.key).join(",") : "");

  // -- data ------------------------------------------------------------------------------------
  function estimate(box, counts = (key) => !state.hide.has(key)) { // nuclei of the classes
    // that `counts` (default: the shown ones) whose centroid lies in box (level-0)
    const [rows, cols] = density.shape, cell = density.cell * info.scale;
    const c0 = Math.max(0, Math.floor(box[0] / cell)), c1 = Math.min(cols - 1, Math.floor(box[2] / cell));
    const r0 = Math.max(0, Math.floor(box[1] / cell)), r1 = Math.min(rows - 1, Math.floor(box[3] / cell));
    let n = 0;
    density.classes.forEach((key, k) => {
      if (!counts(key)) return;
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) n += density.data[(k * rows + r) * cols + c];
    });
    return n;
  }
  function changed() { // the view settled or a setting changed: save it and fetch what it needs
    if (!viewer || !viewer.world.getItemAt(0)) return;
    const vp = viewer.viewport, centre = vp.viewportToImageCoordinates(vp.getCenter(true));
    state.x = centre.x; state.y = centre.y; state.z = zoom();
    writeHash();
    const box = viewBox(), estimated = estimate(box);
    let mode = state.overlay;
    if (mode === "auto") {
      const small = state.z * info.scale < MIN_OUTLINE_SCALE;
      mode = small || estimated > info.limits.nuclei ? "heatmap" : "outlines";
    }
    view.mode = mode;
    if (mode !== "outlines") clearSelection();
    const shown = clipped(box), fetched = shown && clipped(padded(box, 0.1));
    const query = shown && `bbox=${fetched.text}&view=${shown.text}${typesParam()}`;
    view.viewKey = mode === "outlines" && query ? query : mode;
    if (mode === "outlines" && !query) { // no part of the slide in view
      nuclei = null; view.dataKey = view.viewKey; status("no part of the slide in view");
      draw();
      return;
    }
    if (mode !== "outlines") {
      view.dataKey = mode;
      const what = state.heat === "all" ? "" : `${heatName()} `;
      status(mode === "heatmap" ? `heat map of ~${estimate(box, inHeat).toLocaleString("en")} ` +
        `${what}nuclei in view; zoom in for outlines` : "overlay off");
      draw();
      return;
    }
    clearTimeout(fetchTimer);
    fetchTimer = setTimeout(() => fetchNuclei(query), 60);
    draw();
  }
  async function getNuclei(url, signal) { // the binary answer of index.pack_nuclei
    const r = await fetch(url, { signal });
    if (!r.ok) {
      const doc = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
      throw new Error(doc.error || `${r.status}`);
    }
    const buf = await r.arrayBuffer(), size = new DataView(buf).getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, size)));
    const types = { "<f8": Float64Array, "<f4": Float32Array, "<i4": Int32Array };
    const length = { offsets: head.n + 1, coords: 2 * head.m };
    const doc = { truncated: head.truncated, view: head.view, values: {} };
    for (const [name, dtype, at] of head.arrays) {
      const arr = new types[dtype](buf, 4 + size + at, length[name] ?? head.n);
      if (["ids", "types", "offsets", "coords"].includes(name)) doc[name] = arr;
      else doc.values[name] = arr;
    }
    return doc;
  }
  async function fetchNuclei(query) {
    if (controller) controller.abort();
    controller = new AbortController();
    view.pending++;
    try {
      const doc = await getNuclei(api(`/nuclei?${query}`), controller.signal);
      nuclei = doc;
      view.dataKey = query; view.nuclei = doc.ids.length; view.truncated = doc.truncated;
      // counted by the server in the view's own box (not the margin), as the download holds
      const n = (doc.view.more ? "over " : "") + doc.view.count.toLocaleString("en");
      status(`${n} nuclei in view` + (doc.truncated ? ", only some drawn (at most " +
        `${info.limits.nuclei.toLocaleString("en")} with the margin): zoom in to see all` : ""));
      view.error = null;
    } catch (err) {
      if (err.name === "AbortError") return;
      view.error = String(err.message || err); status(`server error: ${view.error}`);
    } finally {
      view.pending--;
    }
    draw();
  }

  // -- drawing ---------------------------------------------------------------------------------
  function draw() {
    if (!canvas || !viewer.world.getItemAt(0)) return;
    const dpr = window.devicePixelRatio || 1;
    const w = viewer.container.clientWidth, h = viewer.container.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = `${w}px`; canvas.style.height = `${h}px`;
    }
    const g = canvas.getContext("2d");
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.clearRect(0, 0, canvas.width, canvas.height);
    const vp = viewer.viewport, o = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const z = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0)).x - o.x;
    if (view.mode === "heatmap") drawHeat(g, o, z, dpr);
    else if (view.mode === "outlines" && nuclei) drawOutlines(g, o, z, dpr);
    scaleBar(z);
    colourBar();
    view.drawn++;
  }
  function drawHeat(g, o, z, dpr) {
    const [rows, cols] = density.shape;
    if (!heatCanvas) {
      let sum = new Float32Array(rows * cols);
      density.classes.forEach((key, k) => {
        if (!inHeat(key)) return;
        for (let i = 0; i < rows * cols; i++) sum[i] += density.data[k * rows * cols + i];
      });
      sum = blur(blur(sum, rows, cols), rows, cols);
      const sorted = sum.filter((v) => v > 0).sort();
      const top = sorted.length ? sorted[Math.floor(0.99 * (sorted.length - 1))] : 1;
      heatCanvas = document.createElement("canvas");
      heatCanvas.width = cols; heatCanvas.height = rows; heatCanvas.top = top;
      const hg = heatCanvas.getContext("2d"), img = hg.createImageData(cols, rows);
      sum.forEach((v, i) => {
        if (v <= 0) return;
        const t = Math.min(v / top, 1), c = heat(t);
        img.data.set([c[0], c[1], c[2], Math.round(255 * (0.25 + 0.5 * t))], 4 * i);
      });
      hg.putImageData(img, 0, 0);
    }
    const side = density.cell * info.scale * z * dpr;
    g.imageSmoothingEnabled = true;
    g.drawImage(heatCanvas, o.x * dpr, o.y * dpr, cols * side, rows * side);
  }
  function blur(a, rows, cols) { // 3 x 3 box mean, edges clamped
    const out = new Float32Array(a.length);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        let s = 0;
        for (let dr = -1; dr <= 1; dr++) {
          const rr = Math.min(rows - 1, Math.max(0, r + dr));
          for (let dc = -1; dc <= 1; dc++) s += a[rr * cols + Math.min(cols - 1, Math.max(0, c + dc))];
        }
        out[r * cols + c] = s / 9;
      }
    }
    return out;
  }
  function drawOutlines(g, o, z, dpr) {
    const k = info.scale * z * dpr, ox = o.x * dpr + 0.5 * k, oy = o.y * dpr + 0.5 * k;
    const { offsets, coords, types, values } = nuclei;
    const byType = classByType();
    const groups = new Map(); // colour -> indices
    const colourOf = state.colour === "class" ? null : values[state.colour];
    const [lo, hi] = colourOf ? info.ranges[state.colour] : [0, 1];
    for (let i = 0; i < types.length; i++) {
      const cls = byType.get(types[i]);
      if (!cls || state.hide.has(cls.key)) continue;
      let colour = cls.colour;
      if (colourOf) {
        const v = colourOf[i];
        colour = Number.isNaN(v) ? [128, 128, 128] :
          viridis(Math.round(((v - lo) / (hi - lo)) * (BINS - 1)) / (BINS - 1));
      }
      const key = css(colour);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(i);
    }
    const width = (k >= 1 ? 2 : 1) * dpr, paths = [];
    for (const [colour, members] of groups) {
      const path = new Path2D();
      for (const i of members) {
        const a = offsets[i], b = offsets[i + 1];
        if (b - a < 1) continue;
        path.moveTo(coords[2 * a] * k + ox, coords[2 * a + 1] * k + oy);
        for (let p = a + 1; p < b; p++) path.lineTo(coords[2 * p] * k + ox, coords[2 * p + 1] * k + oy);
        path.closePath();
      }
      paths.push([colour, path]);
    }
    g.lineJoin = "round";
    if (colourOf) { // the scale's dark colours get a light halo: visible on haematoxylin too
      g.lineWidth = width + 2 * dpr; g.strokeStyle = "rgba(255,255,255,0.9)";
      for (const [colour, path] of paths) if (luminance(colour) < HALO_BELOW) g.stroke(path);
    }
    g.lineWidth = width;
    for (const [colour, path] of paths) { g.strokeStyle = colour; g.stroke(path); }
    const s = selected === null ? -1 : nuclei.ids.indexOf(selected);
    if (s >= 0) {
      g.lineWidth = 4 * dpr; g.strokeStyle = "#ffffff"; g.beginPath();
      for (let p = offsets[s]; p < offsets[s + 1]; p++) {
        const x = coords[2 * p] * k + ox, y = coords[2 * p + 1] * k + oy;
        if (p === offsets[s]) g.moveTo(x, y); else g.lineTo(x, y);
      }
      g.closePath(); g.stroke();
    }
  }
  function scaleBar(z) {
    const umPerPx = info.mpp / z, target = 120 * umPerPx;
    const p = 10 ** Math.floor(Math.log10(target));
    const len = [5, 2, 1].map((m) => m * p).find((v) => v <= target) || p;
    $("scalebar-bar").style.width = `${Math.round(len / umPerPx)}px`;
    $("scalebar-label").textContent = len >= 1000 ? `${len / 1000} mm` : `${len} µm`;
  }

  // -- click and download ----------------------------------------------------------------------
  function inside(x, y, a, b, coords) {
    let hit = false;
    for (let i = a, j = b - 1; i < b; j = i++) {
      const xi = coords[2 * i], yi = coords[2 * i + 1], xj = coords[2 * j], yj = coords[2 * j + 1];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
    }
    return hit;
  }
  async function pick(position) {
    if (view.mode !== "outlines" || !nuclei) return;
    const p = viewer.viewport.viewerElementToImageCoordinates(position);
    const x = p.x / info.scale - 0.5, y = p.y / info.scale - 0.5;
    const byType = classByType();
    let found = null;
    for (let i = 0; i < nuclei.ids.length && found === null; i++) {
      const cls = byType.get(nuclei.types[i]);
      if (cls && !state.hide.has(cls.key) && inside(x, y, nuclei.offsets[i], nuclei.offsets[i + 1], nuclei.coords)) found = i;
    }
    if (found === null) { clearSelection(); draw(); return; }
    const id = selected = nuclei.ids[found];
    selectedKey = byType.get(nuclei.types[found]).key;
    draw();
    try {
      const d = await getJSON(api(`/nucleus/${id}`));
      if (selected === id) showDetails(d); // not cleared or replaced meanwhile
    } catch (err) { status(`server error: ${err.message}`); }
  }
  function clearSelection() { // the info panel goes with the outline it describes
    selected = selectedKey = null;
    $("details").hidden = true;
    $("details").replaceChildren();
  }
  function showDetails(d) {
    const rows = [["class", d.class.name], ["type probability", fmt(d.type_prob)],
      ["area (µm²)", fmt(d.area_um2, 4)], ["area (px²)", fmt(d.area_px, 4)],
      ["perimeter (µm)", fmt(d.perimeter_um, 4)], ["eccentricity", fmt(d.eccentricity)],
      ["solidity", fmt(d.solidity)], ["centroid (px)", d.centroid.map((v) => v.toFixed(1)).join(", ")],
      ...d.type_probs.map((t) => [`p(${t.name})`, fmt(t.p)])];
    const h = document.createElement("h2");
    h.textContent = `Nucleus ${d.number}`;
    const table = document.createElement("table");
    for (const [k, v] of rows) {
      const r = table.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = v;
    }
    $("details").replaceChildren(h, table);
    $("details").hidden = false;
  }
  function download(e) { // the nuclei counted in the status line: same box, same rule
    const shown = clipped(viewBox());
    if (!shown) { e.preventDefault(); return; }
    e.currentTarget.href = api(`/nuclei.geojson?bbox=${shown.text}${typesParam()}`);
    if (estimate(shown.box) > info.limits.geojson) {
      status(`the download holds the first ${info.limits.geojson.toLocaleString("en")} nuclei ` +
        "of the view: zoom in for all of them");
    }
  }

  start().catch((err) => {
    view.error = String(err.message || err);
    document.body.textContent = `hovernet view: ${view.error}`;
  });
})();
