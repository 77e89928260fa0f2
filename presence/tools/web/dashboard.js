/* presence dashboard: the Available-vs-Online chart and the pipeline status,
 * refreshed every few seconds without reloading the page. No build step and
 * no network access beyond this server: uPlot ships in /static/vendor. */
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
  };

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
      $("latest-hint").textContent = state.latest ? `The newest row is ${state.latest} UTC.` : "";
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

  // ------------------------------------------------------------ refresh

  class AuthError extends Error {}

  async function getJson(url) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(url, { cache: "no-store", headers });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) throw new AuthError(body.error || "this server needs an API token");
    if (!res.ok) throw new Error(body.error || `${url}: HTTP ${res.status}`);
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
    const errors = [];
    const [reports, status] = await Promise.allSettled([
      getJson("/reports?" + rangeQuery().toString()),
      getJson("/status"),
    ]);
    const refused = [reports, status].find((r) => r.status === "rejected" && r.reason instanceof AuthError);
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
    if (reports.status === "fulfilled") {
      renderReports(reports.value.body, reports.value.more);
    } else {
      errors.push(reports.reason.message);
      renderReportsError(reports.reason.message);
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
  });

  window.presence = { state, points: 0, updates: 0, refresh, timeTicks, timeIncrs };
  Object.defineProperty(window.presence, "chart", { get: () => state.chart });
  syncControls();
  refresh();
})();
