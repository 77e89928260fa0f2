/* presence dashboard: the Available-vs-Online chart (whole fleet or one segment
 * value), the zone map of an h3:R segment and the pipeline status, refreshed
 * every few seconds without reloading the page. No build step and no network
 * access beyond this server: uPlot ships in /static/vendor, the map is plain SVG. */
(function () {
  "use strict";

  const PRESETS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  const COLORS = { online: "#1f77b4", available: "#2ca02c", corrected: "#d62728" };
  const REFRESH_MIN = 2, REFRESH_MAX = 3600; // seconds
  const ROWS_DEFAULT = 20000, ROWS_MAX = 100000; // newest rows asked for (the API's page)
  const TOKEN_KEY = "presence.apiToken";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);

  // The API token (PRESENCE_API_TOKEN): typed into the page once, or given in the URL's
  // fragment as #token=... (a fragment never reaches the server, so no access log holds
  // it), kept in this tab's sessionStorage only, and taken out of the address bar at once.
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  if (fragment.has("token")) {
    if (fragment.get("token")) sessionStorage.setItem(TOKEN_KEY, fragment.get("token"));
    fragment.delete("token");
    const rest = fragment.toString();
    window.history.replaceState(null, "", window.location.pathname + window.location.search +
                                (rest ? "#" + rest : ""));
  }

  function clamp(value, low, high, fallback) {
    const n = Number(value);
    return Number.isFinite(n) && value !== null && value !== "" ? Math.min(high, Math.max(low, n)) : fallback;
  }

  const state = {
    preset: "1h",
    from: null, // custom range, epoch seconds
    to: null,
    rawFrom: null, // ?from= / ?to= as given, sent as is so that the API judges them
    rawTo: null,
    live: params.get("live") !== "0",
    every: clamp(params.get("refresh"), REFRESH_MIN, REFRESH_MAX, 5),
    rows: Math.round(clamp(params.get("limit"), 1, ROWS_MAX, ROWS_DEFAULT)),
    timer: null,
    chart: null,
    latest: null,
    needToken: false,
    seq: 0, // refreshes started: an answer to an older one is not drawn
    // Segments (GET /segments): the chart's definition and value, from the URL as
    // ?segment=city,vehicle_type&city=Hong%20Kong&vehicle_type=van (/reports' own spelling).
    segment: (params.get("segment") || "").trim(),
    segmentKey: null, // {field: value}, or null: no value chosen yet
    segments: null, // the definitions /segments listed ([] = none configured)
    segmentsAbsent: false, // a server without GET /segments (404)
    segmentsAt: null, // Date.now() of the last answer of /segments
    config: null, // GET /dashboard.json: {mapTiles: "<URL template>" | null}, once
    map: {
      mode: params.get("map") === "share" ? "share" : "available",
      at: params.get("map_at") || "", // "" = the latest bucket
      res: params.has("map_res") ? Number(params.get("map_res")) : null,
      area: params.get("map_area") || "", // "" = the busiest area, "all", or "lat,lng"
      body: null, // the last FeatureCollection drawn
      bodyText: null,
      cells: [],
      areas: [],
      hot: null, // the h3 id under the pointer
    },
  };
  if (state.segment) {
    const key = {};
    const fields = fieldsOf(state.segment);
    if (fields.every((f) => params.has(f))) {
      for (const f of fields) key[f] = params.get(f);
      state.segmentKey = key;
    }
  }

  // Initial range from the URL: ?range=1h|all|..., or ?from=&to= (ISO or epoch).
  if (params.has("from") || params.has("to")) {
    state.preset = "custom";
    state.rawFrom = params.get("from");
    state.rawTo = params.get("to");
    state.from = parseTime(state.rawFrom);
    state.to = parseTime(state.rawTo);
  } else if (params.get("range") && (params.get("range") in PRESETS || params.get("range") === "all")) {
    state.preset = params.get("range");
  }

  // "city, Vehicle_Type" -> ["city", "vehicle_type"]; "h3:08" -> "h3" (its query parameter).
  function dimsOf(name) {
    return String(name).split(",").map((d) => d.trim().toLowerCase().replace(/\s+/g, "")).filter(Boolean)
      .map((d) => (/^h3:\d+$/.test(d) ? `h3:${Number(d.slice(3))}` : d));
  }

  function fieldsOf(name) {
    return dimsOf(name).map((d) => (d.startsWith("h3:") ? "h3" : d));
  }

  function parseTime(text) {
    if (!text) return null;
    if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
    const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? null : ms / 1000;
  }

  function toInput(epoch) { // datetime-local value, in UTC
    return epoch == null ? "" : new Date(epoch * 1000).toISOString().slice(0, 16);
  }

  function fromInput(value) {
    return value ? Date.parse(value + ":00Z") / 1000 : null;
  }

  function isoZ(epoch) {
    return new Date(epoch * 1000).toISOString().replace(".000Z", "Z");
  }

  // Always the newest rows of the range (so "all" shows the latest data however much
  // there is), at most state.rows of them; the API says in a Link header if it had more.
  function rangeQuery() {
    const q = new URLSearchParams({ revision: "true", newest: "true", limit: String(state.rows) });
    if (state.preset in PRESETS) {
      q.set("from", isoZ(Math.floor(Date.now() / 1000) - PRESETS[state.preset]));
    } else if (state.preset === "custom") {
      const from = state.rawFrom != null ? state.rawFrom : (state.from != null ? isoZ(state.from) : null);
      const to = state.rawTo != null ? state.rawTo : (state.to != null ? isoZ(state.to) : null);
      if (from) q.set("from", from);
      if (to) q.set("to", to);
    }
    return q;
  }

  function reportsQuery() {
    const q = rangeQuery();
    if (state.segment && state.segmentKey) {
      q.set("segment", state.segment);
      for (const [field, value] of Object.entries(state.segmentKey)) q.set(field, value);
    }
    return q;
  }

  function fmt(n) {
    return n == null ? "–" : Number(n).toLocaleString("en-US");
  }

  function epochOfBucket(text) { // "YYYY-MM-DD HH:MM:SS", UTC
    return Date.parse(text.replace(" ", "T") + "Z") / 1000;
  }

  // ------------------------------------------------------------ chart

  function chartWidth() {
    return Math.max(320, $("chart").clientWidth || 800);
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  // 24-hour UTC tick labels; the date under the first tick and at each new day. Seconds
  // only when the ticks are less than a minute apart, and never the same label twice.
  function timeTicks(u, splits, axisIdx, space, incr) {
    const seconds = incr != null ? incr % 60 !== 0 : splits.some((ts) => ts % 60 !== 0);
    let day = null, previous = null;
    return splits.map((ts) => {
      const d = new Date(ts * 1000);
      let hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
      if (seconds) hm += `:${pad(d.getUTCSeconds())}`;
      const date = d.toISOString().slice(0, 10);
      if (`${date} ${hm}` === previous) return "";
      previous = `${date} ${hm}`;
      const label = date !== day ? `${hm}\n${date}` : hm;
      day = date;
      return label;
    });
  }

  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                      21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
                      91 * 86400, 182 * 86400, 365 * 86400];

  // Tick steps no finer than the rows' own spacing (a bucket): a handful of one-minute
  // rows get one tick per minute, not one every 15 s.
  function timeIncrs(u) {
    const xs = (u && u.data && u.data[0]) || [];
    let step = Infinity;
    for (let i = 1; i < xs.length; i++) step = Math.min(step, xs[i] - xs[i - 1]);
    if (!Number.isFinite(step) || step <= 0) step = 60;
    const coarse = TIME_INCRS.filter((inc) => inc >= step);
    return coarse.length ? coarse : [TIME_INCRS[TIME_INCRS.length - 1]];
  }

  function makeChart(data) {
    const opts = {
      width: chartWidth(),
      height: 380,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } },
      axes: [
        { label: "Time (UTC)", labelSize: 24, size: 56, space: 70, incrs: timeIncrs, values: timeTicks },
        { label: "Drivers", labelSize: 30, size: 60, values: (u, vals) => vals.map(fmt) },
      ],
      series: [
        { label: "Time (UTC)", value: "{YYYY}-{MM}-{DD} {HH}:{mm}" },
        { label: "Online", stroke: COLORS.online, width: 2, value: (u, v) => fmt(v) },
        { label: "Available", stroke: COLORS.available, width: 2, value: (u, v) => fmt(v) },
        {
          label: "Late-corrected (revision > 1)",
          stroke: COLORS.corrected,
          width: 2,
          paths: () => null,
          points: { show: true, size: 10, width: 2, stroke: COLORS.corrected, fill: "rgba(0,0,0,0)" },
          value: (u, v) => (v == null ? "–" : "revised"),
        },
      ],
      legend: { live: true },
    };
    return new uPlot(opts, data, $("chart"));
  }

  function renderReports(rows, more) {
    const xs = [], online = [], available = [], corrected = [];
    let revised = 0;
    for (const r of rows) {
      xs.push(epochOfBucket(r.time));
      online.push(r.online);
      available.push(r.available);
      const late = (r.revision || 1) > 1;
      corrected.push(late ? r.online : null);
      if (late) revised += 1;
    }
    const data = [xs, online, available, corrected];
    if (!state.chart) {
      state.chart = makeChart(data);
    } else {
      state.chart.setData(data);
    }
    const el = $("chart");
    el.dataset.points = String(rows.length);
    el.dataset.corrected = String(revised);
    el.dataset.state = "ready";
    el.dataset.more = more ? "1" : "0";
    $("reports-error").hidden = true;
    $("empty").hidden = rows.length > 0;
    if (rows.length) {
      const last = rows[rows.length - 1];
      $("summary").textContent =
        `${fmt(rows.length)} buckets from ${rows[0].time} to ${last.time} UTC · ` +
        `latest: ${fmt(last.online)} online, ${fmt(last.available)} available · ` +
        `${fmt(revised)} corrected by late pings` +
        (more ? ` · the newest ${fmt(rows.length)} rows of the range: narrow it to see older ones` : "");
    } else {
      $("summary").textContent = "";
      const latest = latestHint();
      $("latest-hint").textContent = state.segment && !state.segmentKey
        ? "Choose a value of this segment."
        : latest ? `The newest row${state.segment ? " of this value" : ""} is ${latest} UTC.` : "";
    }
    window.presence.points = rows.length;
  }

  // A refused range (e.g. ?from=banana): the API's own words, and no rows at all rather
  // than silently every row.
  function renderReportsError(message) {
    if (state.chart) state.chart.setData([[], [], [], []]);
    const el = $("chart");
    el.dataset.points = "0";
    el.dataset.state = "error";
    $("reports-error").textContent = message;
    $("reports-error").hidden = false;
    $("empty").hidden = true;
    $("summary").textContent = "";
    window.presence.points = 0;
  }

  // ------------------------------------------------------------ status

  function fact(name, value, cls) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    if (cls) dd.className = cls;
    div.append(dt, dd);
    return div;
  }

  function cells(tr, values) {
    for (const v of values) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
  }

  function renderStatus(s) {
    state.latest = s.reports && s.reports.last;
    const t = s.totals || {};
    const k = s.kafka || {};
    const facts = $("facts");
    facts.replaceChildren(
      fact("topic", k.topic || "–"),
      fact("watermark (UTC)", s.watermark ? s.watermark.replace("T", " ").slice(0, 19) : "–"),
      fact("Kafka", k.reachable ? `reachable, lag ${fmt(k.lag)}` : "unreachable", k.reachable ? "good" : "bad"),
      fact("valid pings", fmt(t.valid)),
      fact("invalid pings", fmt(t.invalid)),
      fact("late pings", fmt(t.late)),
      fact("too late", fmt(t.tooLate)),
      fact("rows written", fmt(t.rowsWritten)),
      fact("row rewrites", fmt(t.rowRewrites)),
      fact("report rows", s.reports ? fmt(s.reports.count) : "–"),
      fact("retention gaps", s.gaps ? `${fmt(s.gaps.count)} (${fmt(s.gaps.lostOffsets)} offsets lost)` : "–",
           s.gaps && s.gaps.count ? "bad" : null),
      fact("dead letters", s.deadLetters ? fmt(s.deadLetters.total) : "–"),
    );
    if (!k.reachable && k.error) {
      const row = fact("Kafka error", k.error, "bad");
      row.className = "wide";
      facts.appendChild(row);
    }

    const body = $("partitions").querySelector("tbody");
    body.replaceChildren();
    for (const p of s.partitions || []) {
      const tr = document.createElement("tr");
      const gaps = (p.gaps || []).map((g) => `${g.from}–${g.to} (${g.lost})`).join(", ") || "none";
      cells(tr, [p.topic === (s.kafka || {}).topic ? String(p.partition) : `${p.topic}:${p.partition}`, p.state || "–", fmt(p.nextOffset), fmt(p.highWatermark),
                 fmt(p.lag), fmt(p.valid), fmt(p.invalid), fmt(p.tooLate), gaps]);
      body.appendChild(tr);
    }
    const dl = $("dead-letters").querySelector("tbody");
    dl.replaceChildren();
    const reasons = (s.deadLetters && s.deadLetters.byReason) || {};
    for (const [reason, count] of Object.entries(reasons)) {
      const tr = document.createElement("tr");
      cells(tr, [reason, fmt(count)]);
      dl.appendChild(tr);
    }
    if (!Object.keys(reasons).length) {
      const tr = document.createElement("tr");
      cells(tr, ["none", "0"]);
      dl.appendChild(tr);
    }
  }

  // ------------------------------------------------------------ segments (the chart's picker)

  const SEGMENT_VALUES = 500; // values per definition asked of /segments (the picker's list)
  const SEGMENTS_EVERY = 30; // seconds: the picker's lists are asked again at most this often

  function sameDefinition(a, b) {
    return dimsOf(a).sort().join(",") === dimsOf(b).sort().join(",");
  }

  function findDefinition(name) {
    return name && state.segments ? state.segments.find((d) => sameDefinition(d.segment, name)) || null : null;
  }

  function keyId(fields, key) {
    return JSON.stringify(fields.map((f) => (key && f in key ? String(key[f]) : null)));
  }

  function keyText(fields, key) {
    return fields.map((f) => String(key[f])).join(" · ");
  }

  function scopeText() {
    if (!state.segment) return "whole fleet";
    if (!state.segmentKey) return `${state.segment}: no value chosen`;
    return Object.entries(state.segmentKey).map(([f, v]) => `${f} = ${v}`).join(", ");
  }

  // The answer of GET /segments, checked: a list of definitions with fields and values.
  function checkSegments(body) {
    if (!body || !Array.isArray(body.segments) ||
        !body.segments.every((d) => d && typeof d.segment === "string" && Array.isArray(d.fields))) {
      throw new Error("GET /segments: unexpected answer (no list of segment definitions)");
    }
    return body.segments.map((d) => ({ ...d, values: Array.isArray(d.values) ? d.values.filter((v) => v && v.key) : [] }));
  }

  function setOptions(select, options) { // [{value, label}], rebuilt only when they changed
    const wanted = JSON.stringify(options);
    if (select.dataset.options === wanted) return;
    select.replaceChildren(...options.map((o) => {
      const el = document.createElement("option");
      el.value = o.value;
      el.textContent = o.label;
      return el;
    }));
    select.dataset.options = wanted;
  }

  function renderSegments(list) {
    state.segments = list;
    $("segment-picker").hidden = list.length === 0 && !state.segment;
    const def = findDefinition(state.segment);
    if (def) state.segment = def.segment; // the normalised spelling
    const options = [{ value: "", label: "whole fleet" }].concat(list.map((d) => ({
      value: d.segment, label: d.resolution != null && d.fields.length === 1 ? `${d.segment} (zone)` : d.segment,
    })));
    if (state.segment && !def) options.push({ value: state.segment, label: `${state.segment} (not configured)` });
    setOptions($("segment"), options);
    $("segment").value = state.segment;
    renderValues();
  }

  function renderValues() {
    const select = $("segment-value");
    const def = findDefinition(state.segment);
    if (!state.segment) {
      setOptions(select, []);
      select.disabled = true;
      $("chart-scope").textContent = scopeText();
      return;
    }
    const fields = def ? def.fields : fieldsOf(state.segment);
    const options = (def ? def.values : []).map((v) => ({
      value: keyId(fields, v.key),
      label: `${keyText(fields, v.key)} (${fmt(v.available)} available of ${fmt(v.online)})`,
    }));
    const chosen = state.segmentKey ? keyId(fields, state.segmentKey) : "";
    if (chosen && !options.some((o) => o.value === chosen)) {
      options.unshift({ value: chosen, label: `${keyText(fields, state.segmentKey)} (no recent row)` });
    }
    if (!options.length) options.push({ value: "", label: "no values yet" });
    if (def && def.truncated) options.push({ value: "", label: `… ${fmt(def.valueCount - def.values.length)} more, not listed` });
    setOptions(select, options);
    select.value = chosen;
    select.disabled = !options.some((o) => o.value);
    $("chart-scope").textContent = scopeText();
  }

  function chooseSegment(name, key) {
    state.segment = name;
    state.segmentKey = key || null;
    if (name && !key) {
      const def = findDefinition(name);
      if (def && def.values.length) state.segmentKey = { ...def.values[0].key }; // the most available
    }
    if (state.segments) renderSegments(state.segments); else renderValues();
    syncUrl();
    refresh();
  }

  // The newest bucket known for the chosen value, for the "no rows in this range" line.
  function latestHint() {
    if (!state.segment) return state.latest;
    const def = findDefinition(state.segment);
    if (!def || !state.segmentKey) return null;
    const id = keyId(def.fields, state.segmentKey);
    const v = def.values.find((x) => keyId(def.fields, x.key) === id);
    return v && v.timeBucket ? bucketText(v.timeBucket) : null;
  }

  // The picker's and the map's choices in the address bar (survive a reload).
  function syncUrl() {
    const q = new URLSearchParams(window.location.search);
    const fields = new Set(["segment"]);
    for (const d of state.segments || []) d.fields.forEach((f) => fields.add(f));
    for (const f of fieldsOf(q.get("segment") || "")) fields.add(f);
    for (const f of fields) q.delete(f);
    if (state.segment) {
      q.set("segment", state.segment);
      for (const [f, v] of Object.entries(state.segmentKey || {})) q.set(f, v);
    }
    for (const k of ["map", "map_at", "map_res", "map_area"]) q.delete(k);
    if (state.map.mode !== "available") q.set("map", state.map.mode);
    if (state.map.at) q.set("map_at", state.map.at);
    if (state.map.res != null && h3Resolutions().length > 1) q.set("map_res", String(state.map.res));
    if (state.map.area) q.set("map_area", state.map.area);
    const text = q.toString();
    window.history.replaceState(null, "", window.location.pathname + (text ? "?" + text : "") + window.location.hash);
  }

  // ------------------------------------------------------------ zone map (GET /zones)

  const MAP_PAD = 18; // px around the cells
  const AREA_GRID = 0.3; // degrees: cells in the same or a neighbouring square are one area
  const AVAILABLE_COLORS = ["#ffffcc", "#c2e699", "#78c679", "#31a354", "#006837"]; // ColorBrewer YlGn
  const SHARE_COLORS = ["#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641"]; // ColorBrewer RdYlGn
  const NONE_COLOR = "#e4e7ec";

  function h3Resolutions() {
    return (state.segments || []).filter((d) => d.resolution != null && d.segment === `h3:${d.resolution}`)
      .map((d) => Number(d.resolution));
  }

  function bucketText(text) {
    if (text == null) return "–";
    const epoch = parseTime(String(text).replace(" ", "T"));
    return epoch == null ? String(text) : new Date(epoch * 1000).toISOString().slice(0, 19).replace("T", " ");
  }

  function zonesUrl() {
    const q = new URLSearchParams({ resolution: String(state.map.res) });
    if (state.map.at) q.set("at", state.map.at);
    return "/zones?" + q.toString();
  }

  // null when no h3:R definition is configured (the map says so instead of asking).
  function loadZones() {
    const resolutions = h3Resolutions();
    if (!resolutions.length) return null;
    if (!resolutions.includes(state.map.res)) state.map.res = resolutions[0];
    return getJson(zonesUrl());
  }

  function isPoint(p) {
    return Array.isArray(p) && p.length >= 2 && Number.isFinite(p[0]) && Number.isFinite(p[1]) &&
      Math.abs(p[0]) <= 180 && Math.abs(p[1]) <= 90;
  }

  // The FeatureCollection checked: cells with a polygon and counts; the rest is counted as bad.
  function readCells(body) {
    if (!body || body.type !== "FeatureCollection" || !Array.isArray(body.features)) {
      throw new Error("GET /zones: unexpected answer (not a GeoJSON FeatureCollection)");
    }
    const cells = [];
    let bad = 0, unplaced = 0;
    for (const f of body.features) {
      const g = f && f.geometry;
      if (f && f.type === "Feature" && g === null) { unplaced += 1; continue; } // e.g. the "other" value
      const ring = g && g.type === "Polygon" && Array.isArray(g.coordinates) ? g.coordinates[0] : null;
      const props = (f && f.properties) || {};
      const online = Number(props.online), available = Number(props.available);
      if (!Array.isArray(ring) || ring.length < 3 || !ring.every(isPoint) ||
          !Number.isFinite(online) || !Number.isFinite(available) || online < 0 || available < 0) {
        bad += 1;
        continue;
      }
      let lng = 0, lat = 0;
      const n = ring.length > 3 && ring[0][0] === ring[ring.length - 1][0] && ring[0][1] === ring[ring.length - 1][1]
        ? ring.length - 1 : ring.length;
      for (let i = 0; i < n; i++) { lng += ring[i][0]; lat += ring[i][1]; }
      cells.push({
        id: String(props.h3 || f.id || `cell ${cells.length + 1}`), ring, online, available,
        bucket: props.timeBucket != null ? props.timeBucket : body.timeBucket, lng: lng / n, lat: lat / n,
      });
    }
    return { cells, bad, unplaced, total: body.features.length };
  }

  // Cells far apart (cities) are separate areas: drawn all at once they would be specks.
  function findAreas(cells) {
    const parent = new Map();
    const find = (k) => { while (parent.get(k) !== k) { parent.set(k, parent.get(parent.get(k))); k = parent.get(k); } return k; };
    const squares = new Map();
    for (const c of cells) {
      const k = `${Math.floor(c.lng / AREA_GRID)}:${Math.floor(c.lat / AREA_GRID)}`;
      if (!squares.has(k)) { squares.set(k, []); parent.set(k, k); }
      squares.get(k).push(c);
    }
    for (const k of squares.keys()) {
      const [x, y] = k.split(":").map(Number);
      for (let dx = -1; dx <= 1; dx++) {
        for (let dy = -1; dy <= 1; dy++) {
          const other = `${x + dx}:${y + dy}`;
          if (squares.has(other)) parent.set(find(other), find(k));
        }
      }
    }
    const groups = new Map();
    for (const [k, members] of squares) {
      const root = find(k);
      if (!groups.has(root)) groups.set(root, []);
      groups.get(root).push(...members);
    }
    return [...groups.values()].map((members) => {
      const lat = members.reduce((a, c) => a + c.lat, 0) / members.length;
      const lng = members.reduce((a, c) => a + c.lng, 0) / members.length;
      return {
        id: `${lat.toFixed(2)},${lng.toFixed(2)}`, lat, lng, cells: members,
        available: members.reduce((a, c) => a + c.available, 0),
        online: members.reduce((a, c) => a + c.online, 0),
      };
    }).sort((a, b) => b.available - a.available || b.cells.length - a.cells.length || a.id.localeCompare(b.id));
  }

  function latLngText(lat, lng) {
    return `${Math.abs(lat).toFixed(2)}° ${lat >= 0 ? "N" : "S"}, ${Math.abs(lng).toFixed(2)}° ${lng >= 0 ? "E" : "W"}`;
  }

  // The chosen area: "all", the one nearest to a remembered "lat,lng", else the busiest.
  function pickArea(areas) {
    if (areas.length <= 1 || state.map.area === "all") return null;
    const m = /^(-?[\d.]+),(-?[\d.]+)$/.exec(state.map.area);
    if (m) {
      const [lat, lng] = [Number(m[1]), Number(m[2])];
      let best = areas[0], dist = Infinity;
      for (const a of areas) {
        const d = (a.lat - lat) ** 2 + (a.lng - lng) ** 2;
        if (d < dist) { dist = d; best = a; }
      }
      return best;
    }
    return areas[0];
  }

  function classesFor(mode, cells) {
    if (mode === "share") {
      const classes = SHARE_COLORS.map((color, i) => ({
        color, label: i === 4 ? "80–100 %" : `${i * 20}–${i * 20 + 19} %`,
        test: (c) => c.online > 0 && Math.min(4, Math.floor((c.available / c.online) * 5)) === i,
      }));
      if (cells.some((c) => c.online === 0)) {
        classes.push({ color: NONE_COLOR, label: "none online", test: (c) => c.online === 0 });
      }
      return classes;
    }
    const max = cells.reduce((a, c) => Math.max(a, c.available), 0);
    const classes = [{ color: NONE_COLOR, label: "0", test: (c) => c.available === 0 }];
    const n = Math.min(5, Math.floor(max));
    let lo = 1;
    for (let k = 1; k <= n; k++) {
      const hi = Math.ceil((max * k) / n);
      if (hi < lo) continue;
      const from = lo, to = k === n ? Infinity : hi;
      classes.push({
        color: AVAILABLE_COLORS[n === 1 ? 4 : Math.round(((k - 1) * 4) / (n - 1))],
        label: from === hi ? fmt(from) : `${fmt(from)}–${fmt(hi)}`,
        test: (c) => c.available >= from && c.available <= to,
      });
      lo = hi + 1;
    }
    return classes;
  }

  function mercatorLat(y) { // the inverse of mercatorY
    return (Math.atan(Math.sinh((y * Math.PI) / 180)) * 180) / Math.PI;
  }

  // A distance bar (bottom left): about 120 px, a round number of metres or kilometres.
  function scaleBar(scale, lat, height) {
    const NS = "http://www.w3.org/2000/svg";
    const metresPerPx = (111320 * Math.cos((lat * Math.PI) / 180)) / scale;
    const want = 120 * metresPerPx;
    const power = 10 ** Math.floor(Math.log10(want));
    const metres = [5, 2, 1].map((m) => m * power).find((m) => m <= want) || power;
    const px = metres / metresPerPx;
    const g = document.createElementNS(NS, "g");
    g.setAttribute("class", "scale");
    const y = height - 14;
    const line = document.createElementNS(NS, "path");
    line.setAttribute("d", `M12,${y - 5}V${y}H${(12 + px).toFixed(1)}V${y - 5}`);
    const text = document.createElementNS(NS, "text");
    text.setAttribute("x", String(12 + px + 6));
    text.setAttribute("y", String(y + 1));
    text.textContent = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
    g.append(line, text);
    return g;
  }

  // PRESENCE_MAP_TILES: Web-Mercator tiles of the zoom nearest to the map's scale, under
  // the cells (the page's own projection is Web Mercator, so they line up). No tiles
  // when not configured, and none beyond 200 (the whole world at a coarse zoom).
  function tileLayer(width, height, x0, y1, ox, oy, scale) {
    const template = state.config && typeof state.config.mapTiles === "string" ? state.config.mapTiles : "";
    if (!/^https?:\/\//.test(template)) return null;
    const z = Math.max(0, Math.min(19, Math.round(Math.log2((scale * 360) / 256))));
    const n = 2 ** z, deg = 360 / n, size = deg * scale;
    const lngAt = (sx) => x0 + (sx - ox) / scale, yAt = (sy) => y1 - (sy - oy) / scale;
    const txFrom = Math.floor((lngAt(0) + 180) / deg), txTo = Math.floor((lngAt(width) + 180) / deg);
    const tyFrom = Math.max(0, Math.floor((180 - yAt(0)) / deg));
    const tyTo = Math.min(n - 1, Math.floor((180 - yAt(height)) / deg));
    if ((txTo - txFrom + 1) * (tyTo - tyFrom + 1) > 200) return null;
    const NS = "http://www.w3.org/2000/svg";
    const g = document.createElementNS(NS, "g");
    g.setAttribute("class", "tiles");
    g.dataset.zoom = String(z);
    for (let tx = txFrom; tx <= txTo; tx++) {
      for (let ty = tyFrom; ty <= tyTo; ty++) {
        const image = document.createElementNS(NS, "image");
        image.setAttribute("href", template.replaceAll("{z}", String(z))
          .replaceAll("{x}", String(((tx % n) + n) % n)).replaceAll("{y}", String(ty)));
        image.setAttribute("x", (ox + (tx * deg - 180 - x0) * scale).toFixed(1));
        image.setAttribute("y", (oy + (y1 - (180 - ty * deg)) * scale).toFixed(1));
        image.setAttribute("width", (size + 0.5).toFixed(1));
        image.setAttribute("height", (size + 0.5).toFixed(1));
        image.setAttribute("preserveAspectRatio", "none");
        g.appendChild(image);
      }
    }
    return g;
  }

  function mercatorY(lat) {
    const r = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
    return Math.log(Math.tan(Math.PI / 4 + r / 2)) * (180 / Math.PI);
  }

  function mapMessage(text, kind) { // kind: "error" (a line above the map) or "empty" (inside it)
    state.map.problem = kind === "error" ? text : null;
    $("map-error").hidden = kind !== "error";
    $("map-error").textContent = kind === "error" ? text : "";
    $("map-empty").hidden = kind !== "empty";
    $("map-empty").textContent = kind === "empty" ? text : "";
  }

  function clearMap(stateName) {
    $("map-svg").replaceChildren();
    $("map-legend").replaceChildren();
    $("map-summary").textContent = "";
    $("map-tip").hidden = true;
    $("map").dataset.cells = "0";
    $("map").dataset.state = stateName;
    state.map.cells = [];
    window.presence.cells = 0;
  }

  // No h3:R definition: one line, no box.
  function renderMapOff() {
    $("map-off").hidden = false;
    $("map-body").hidden = true;
    $("map-scope").textContent = "";
    clearMap("off");
  }

  function renderMapError(message) {
    $("map-off").hidden = true;
    $("map-body").hidden = false;
    state.map.body = state.map.bodyText = null;
    clearMap("error");
    mapMessage(message, "error");
  }

  function renderZones(body) {
    $("map-off").hidden = true;
    $("map-body").hidden = false;
    const resolutions = h3Resolutions();
    setOptions($("map-resolution"), resolutions.map((r) => ({ value: String(r), label: `h3:${r}` })));
    $("map-resolution").value = String(state.map.res);
    $("map-resolution-label").hidden = resolutions.length < 2;
    $("map-mode").value = state.map.mode;
    let read;
    try {
      read = readCells(body);
    } catch (err) {
      renderMapError(err.message);
      return;
    }
    state.map.body = body;
    const bucket = body.timeBucket != null ? body.timeBucket : (read.cells[0] && read.cells[0].bucket);
    if (!state.map.at && bucket != null && document.activeElement !== $("map-at")) {
      const epoch = parseTime(String(bucket).replace(" ", "T"));
      if (epoch != null) $("map-at").value = toInput(epoch);
    }
    $("map-scope").textContent = `h3:${state.map.res} · ${bucket != null ? bucketText(bucket) + " UTC" : "no bucket yet"}` +
      (state.map.at ? "" : " (latest)");
    const areas = findAreas(read.cells);
    state.map.areas = areas;
    const area = pickArea(areas);
    setOptions($("map-area"), areas.length > 1 ? [{ value: "all", label: `all (${fmt(read.cells.length)} cells)` }].concat(
      areas.map((a) => ({ value: a.id, label: `near ${latLngText(a.lat, a.lng)} · ${fmt(a.cells.length)} cells · ${fmt(a.available)} available` }))) : []);
    $("map-area-label").hidden = areas.length < 2;
    $("map-area").value = area ? area.id : "all";
    const cells = area ? area.cells : read.cells;
    clearMap("ready");
    if (!read.cells.length) {
      $("map").dataset.state = read.bad ? "error" : "empty";
      if (read.bad) mapMessage(`GET /zones: none of its ${fmt(read.total)} features is a cell with a polygon and counts`, "error");
      else mapMessage(state.map.at ? `No zone rows at ${bucketText(state.map.at)} UTC (h3:${state.map.res}).`
                                   : `No zone rows yet (h3:${state.map.res}).`, "empty");
      return;
    }
    mapMessage(read.bad ? `GET /zones: ${fmt(read.bad)} of ${fmt(read.total)} features had no polygon or counts and are not drawn` : "",
               read.bad ? "error" : null);
    drawCells(cells, bucket);
    const notes = [];
    const other = body.other;
    if (other && Number.isFinite(Number(other.online))) {
      notes.push(`${fmt(other.online)} online, ${fmt(other.available)} available in cells beyond ` +
                 "PRESENCE_MAX_SEGMENT_VALUES (\"other\": no place, not drawn)");
    }
    if (read.unplaced) notes.push(`${fmt(read.unplaced)} features without a place not drawn`);
    if (body.truncated) notes.push("the API sent only part of this bucket's cells");
    if ($("map-svg").querySelector("g.tiles")) {
      notes.push(`background tiles from ${new URL(state.config.mapTiles.replace(/[{}]/g, "")).host} (PRESENCE_MAP_TILES)`);
    }
    if (notes.length) $("map-summary").textContent += " · " + notes.join(" · ");
  }

  function drawCells(cells, bucket) {
    const svg = $("map-svg");
    const width = svg.clientWidth || 800, height = svg.clientHeight || 500;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const c of cells) {
      for (const [lng, lat] of c.ring) {
        const y = mercatorY(lat);
        x0 = Math.min(x0, lng); x1 = Math.max(x1, lng); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
    const scale = Math.min((width - 2 * MAP_PAD) / Math.max(x1 - x0, 1e-9), (height - 2 * MAP_PAD) / Math.max(y1 - y0, 1e-9));
    const ox = (width - (x1 - x0) * scale) / 2, oy = (height - (y1 - y0) * scale) / 2;
    const project = ([lng, lat]) => `${(ox + (lng - x0) * scale).toFixed(1)},${(oy + (y1 - mercatorY(lat)) * scale).toFixed(1)}`;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const classes = classesFor(state.map.mode, cells);
    const counts = classes.map(() => 0);
    const NS = "http://www.w3.org/2000/svg";
    const paths = cells.map((c) => {
      const path = document.createElementNS(NS, "path");
      path.setAttribute("d", "M" + c.ring.map(project).join("L") + "Z");
      const k = classes.findIndex((cl) => cl.test(c));
      counts[k] += 1;
      path.setAttribute("fill", k >= 0 ? classes[k].color : NONE_COLOR);
      path.setAttribute("class", c.id === state.map.hot ? "cell hot" : "cell");
      path.dataset.h3 = c.id;
      return path;
    });
    const tiles = tileLayer(width, height, x0, y1, ox, oy, scale);
    svg.classList.toggle("with-tiles", Boolean(tiles));
    svg.replaceChildren(...(tiles ? [tiles] : []), ...paths,
                        scaleBar(scale, (mercatorLat(y0) + mercatorLat(y1)) / 2, height));
    state.map.cells = cells;
    const byId = new Map(cells.map((c) => [c.id, c]));
    state.map.byId = byId;

    const legend = $("map-legend");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = state.map.mode === "share" ? "available / online per cell:" : "available drivers per cell:";
    legend.replaceChildren(title, ...classes.map((cl, i) => {
      const item = document.createElement("span");
      item.className = "item";
      item.dataset.color = cl.color;
      item.dataset.cells = String(counts[i]);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = cl.color;
      item.append(swatch, document.createTextNode(cl.label));
      item.title = `${fmt(counts[i])} cells`;
      return item;
    }));
    const online = cells.reduce((a, c) => a + c.online, 0), available = cells.reduce((a, c) => a + c.available, 0);
    $("map-summary").textContent = `${fmt(cells.length)} cells · ${fmt(available)} available of ${fmt(online)} online ` +
      `(a driver who moved counts in every cell it pinged from) · bucket ${bucketText(bucket)} UTC · ` +
      "point at a cell for its figures, click it to chart it";
    $("map").dataset.cells = String(cells.length);
    $("map").dataset.state = "ready";
    window.presence.cells = cells.length;
  }

  function showTip(cell, clientX, clientY) {
    const tip = $("map-tip");
    const share = cell.online ? ` (${Math.round((100 * cell.available) / cell.online)} %)` : "";
    tip.replaceChildren();
    const lines = [["cell", cell.id], ["online", fmt(cell.online)], ["available", fmt(cell.available) + share],
                   ["bucket", `${bucketText(cell.bucket)} UTC`]];
    for (const [name, value] of lines) {
      const div = document.createElement("div");
      const b = document.createElement("b");
      b.textContent = `${name} `;
      div.append(b, document.createTextNode(value));
      tip.appendChild(div);
    }
    tip.hidden = false;
    const box = $("map").getBoundingClientRect();
    const x = clientX - box.left, y = clientY - box.top;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = `${Math.max(4, Math.min(box.width - w - 4, x + 14))}px`;
    tip.style.top = `${Math.max(4, y + 14 + h > box.height ? y - h - 10 : y + 14)}px`;
  }

  $("map-svg").addEventListener("mousemove", (ev) => {
    const path = ev.target.closest && ev.target.closest("path.cell");
    const cell = path && state.map.byId && state.map.byId.get(path.dataset.h3);
    if (!cell) { $("map-tip").hidden = true; state.map.hot = null; return; }
    state.map.hot = cell.id;
    showTip(cell, ev.clientX, ev.clientY);
  });
  $("map-svg").addEventListener("mouseleave", () => { $("map-tip").hidden = true; state.map.hot = null; });
  $("map-svg").addEventListener("click", (ev) => {
    const path = ev.target.closest && ev.target.closest("path.cell");
    if (path && path.dataset.h3) chooseSegment(`h3:${state.map.res}`, { h3: path.dataset.h3 });
  });

  function redrawMap() {
    if (state.map.body) renderZones(state.map.body);
  }

  $("map-mode").addEventListener("change", () => { state.map.mode = $("map-mode").value; syncUrl(); redrawMap(); });
  $("map-area").addEventListener("change", () => { state.map.area = $("map-area").value; syncUrl(); redrawMap(); });
  $("map-resolution").addEventListener("change", () => {
    state.map.res = Number($("map-resolution").value);
    syncUrl();
    refresh();
  });
  $("map-controls").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const epoch = fromInput($("map-at").value);
    state.map.at = epoch == null || Number.isNaN(epoch) ? "" : isoZ(epoch);
    syncUrl();
    refresh();
  });
  $("map-latest").addEventListener("click", () => {
    state.map.at = "";
    $("map-at").value = "";
    syncUrl();
    refresh();
  });
  $("segment").addEventListener("change", () => chooseSegment($("segment").value, null));
  $("segment-value").addEventListener("change", () => {
    const def = findDefinition(state.segment);
    const fields = def ? def.fields : fieldsOf(state.segment);
    const values = JSON.parse($("segment-value").value || "null");
    if (!values) { // a note ("… more, not listed"), not a value: keep the choice
      $("segment-value").dataset.options = "";
      renderValues();
      return;
    }
    const key = {};
    fields.forEach((f, i) => { key[f] = values[i]; });
    chooseSegment(state.segment, key);
  });

  // ------------------------------------------------------------ refresh

  class AuthError extends Error {}

  async function getJson(url) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(url, { cache: "no-store", headers });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) throw new AuthError(body.error || "this server needs an API token");
    if (!res.ok) {
      const err = new Error(body.error || `${url.split("?")[0]}: HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return { body, more: Boolean(res.headers.get("Link")) };
  }

  function askForToken(message) {
    state.needToken = true;
    const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
    sessionStorage.removeItem(TOKEN_KEY);
    $("auth-message").textContent = hadToken
      ? `The API token was refused (${message}). Enter it again.`
      : "This server needs its API token (PRESENCE_API_TOKEN).";
    $("auth").hidden = false;
    $("token").focus();
  }

  async function refresh() {
    clearTimeout(state.timer);
    const seq = ++state.seq;
    const errors = [];
    // /segments (the picker's lists; a server without it has no segments), then /zones
    // of the h3:R definition it names; the chart's rows and the status meanwhile.
    const fresh = state.segmentsAt != null && Date.now() - state.segmentsAt < SEGMENTS_EVERY * 1000;
    const segmentsCall = fresh ? Promise.resolve({ list: state.segments, absent: state.segmentsAbsent })
      : getJson(`/segments?limit=${SEGMENT_VALUES}`).then(
        (r) => ({ list: checkSegments(r.body), absent: false, at: Date.now() }),
        (err) => {
          if (err.status === 404) return { list: [], absent: true, at: Date.now() };
          throw err;
        });
    const configCall = state.config ? Promise.resolve(state.config) : getJson("/dashboard.json").then(
      (r) => (state.config = r.body && typeof r.body === "object" ? r.body : {}),
      (err) => {
        if (err instanceof AuthError) throw err;
        if (err.status === 404) state.config = {}; // a server without it: no tiles
        return {};
      });
    const zonesCall = Promise.all([segmentsCall, configCall]).then(([s]) => {
      state.segments = s.list;
      return loadZones();
    });
    const wantsRows = !state.segment || state.segmentKey;
    const [reports, status, segments, zones] = await Promise.allSettled([
      wantsRows ? getJson("/reports?" + reportsQuery().toString()) : Promise.resolve({ body: [], more: false }),
      getJson("/status"),
      segmentsCall,
      zonesCall,
    ]);
    if (seq !== state.seq) return; // a newer refresh has started: its answers count
    const all = [reports, status, segments, zones];
    const refused = all.find((r) => r.status === "rejected" && r.reason instanceof AuthError);
    if (refused) {
      askForToken(refused.reason.message);
      $("updated").textContent = "waiting for the API token";
      $("updated").className = "error";
      $("chart").dataset.state = "auth";
      window.presence.updates += 1;
      return; // no timer: the token form starts the next refresh
    }
    state.needToken = false;
    $("auth").hidden = true;
    if (status.status === "fulfilled") {
      renderStatus(status.value.body);
      $("status-error").hidden = true;
    } else {
      errors.push(status.reason.message);
      $("status-error").textContent = status.reason.message;
      $("status-error").hidden = false;
    }
    if (segments.status === "fulfilled") {
      state.segmentsAbsent = segments.value.absent;
      if (segments.value.at) state.segmentsAt = segments.value.at;
      renderSegments(segments.value.list);
      $("segments-error").hidden = true;
    } else {
      state.segmentsAt = null; // asked again next time
      errors.push(segments.reason.message);
      $("segments-error").textContent = segments.reason.message;
      $("segments-error").hidden = false;
      renderValues();
    }
    if (reports.status === "fulfilled" && !Array.isArray(reports.value.body)) {
      errors.push("GET /reports: unexpected answer (not a list of rows)");
      renderReportsError(errors[errors.length - 1]);
    } else if (reports.status === "fulfilled") {
      renderReports(reports.value.body, reports.value.more);
    } else {
      errors.push(reports.reason.message);
      renderReportsError(reports.reason.message);
    }
    if (segments.status === "rejected") {
      renderMapError(segments.reason.message);
    } else if (zones.status === "rejected") {
      errors.push(zones.reason.message);
      renderMapError(zones.reason.message);
    } else if (zones.value === null) {
      renderMapOff();
    } else {
      const text = JSON.stringify(zones.value.body);
      if (text !== state.map.bodyText || $("map").dataset.state !== "ready") {
        renderZones(zones.value.body);
        state.map.bodyText = state.map.body ? text : null;
      }
      if (state.map.problem) errors.push(state.map.problem);
    }
    window.presence.updates += 1;
    $("updated").textContent = errors.length
      ? `error: ${errors[0]}`
      : `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("updated").className = errors.length ? "error" : "muted";
    if (state.live) state.timer = setTimeout(refresh, state.every * 1000);
  }

  function syncControls() {
    $("preset").value = state.preset;
    const custom = state.preset === "custom";
    $("from").disabled = $("to").disabled = !custom;
    if (custom) {
      $("from").value = toInput(state.from);
      $("to").value = toInput(state.to);
    }
    $("live").checked = state.live;
    $("every").textContent = String(state.every);
  }

  function forgetUrlRange() { state.rawFrom = state.rawTo = null; }

  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("auth").hidden = true;
    refresh();
  });
  $("preset").addEventListener("change", () => {
    forgetUrlRange();
    state.preset = $("preset").value;
    if (state.preset === "custom" && state.from == null && state.chart) {
      const xs = state.chart.data[0];
      if (xs.length) { state.from = xs[0]; state.to = xs[xs.length - 1]; }
    }
    syncControls();
    if (state.preset !== "custom") refresh();
  });
  $("range").addEventListener("submit", (ev) => {
    ev.preventDefault();
    forgetUrlRange();
    if (state.preset === "custom") {
      state.from = fromInput($("from").value);
      state.to = fromInput($("to").value);
    }
    refresh();
  });
  $("live").addEventListener("change", () => {
    state.live = $("live").checked;
    if (state.live && !state.needToken) refresh(); else clearTimeout(state.timer);
  });
  $("show-all").addEventListener("click", () => {
    forgetUrlRange();
    state.preset = "all";
    syncControls();
    refresh();
  });
  window.addEventListener("resize", () => {
    if (state.chart) state.chart.setSize({ width: chartWidth(), height: 380 });
    redrawMap();
  });

  window.presence = { state, points: 0, cells: 0, updates: 0, refresh, timeTicks, timeIncrs };
  Object.defineProperty(window.presence, "chart", { get: () => state.chart });
  syncControls();
  $("chart-scope").textContent = scopeText();
  refresh();
})();
