/* surefoot dashboard: reads the admin API (GET /admin/series, /admin/top, /admin/alerts,
 * /admin/silences, /admin/config) with the admin token and draws it with uPlot.
 *
 * Rules:
 * - Every text that comes from the API goes into the page with textContent (or an
 *   attribute set through the DOM), never as HTML; a runbook link is kept only when it is
 *   an http(s) address.
 * - The token is asked once and kept in sessionStorage; it is sent as a Bearer header and
 *   nowhere else. A 401 forgets it and asks again.
 * - The page talks to the admin API only, and one refresh runs at a time (every 5 s,
 *   and at once when the range changes or a silence is made or expired).
 *
 * Files: index.html loads /admin/dashboard/{uplot.min.css,dashboard.css,uplot.min.js,
 * dashboard.js}. uplot.min.js and uplot.min.css are uPlot 1.6.32 (MIT, uplot.LICENSE)
 * unchanged: dist/uPlot.iife.min.js and dist/uPlot.min.css of `npm pack uplot@1.6.32`.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "surefoot.admin.token";
  const RANGE_KEY = "surefoot.dashboard.range";
  const AUTHOR_KEY = "surefoot.dashboard.created_by";
  const REFRESH_MS = 5000;
  const CONFIG_EVERY = 12; // refreshes between two reads of /admin/config
  const RANGES = ["15m", "1h", "6h", "24h"];
  const TOP_ITEMS = 10;
  const TOP_KEY_ITEMS = 6;
  const CHART_HEIGHT = 170;
  const PALETTE = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
  ];
  const BREAKER_STATES = ["closed", "half open", "open"];

  // -- formatting ------------------------------------------------------------------------

  function num(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(3).replace(/\.?0+$/, "") + "k";
    if (a >= 100) return String(Math.round(v));
    return String(Number(v.toPrecision(3)));
  }

  function rate(v) { return num(v) + "/s"; }

  function count(v) { return num(Math.round(v)); }

  function age(v) {
    if (v < 90) return num(v) + " s";
    if (v < 5400) return num(v / 60) + " min";
    if (v < 172800) return num(v / 3600) + " h";
    return num(v / 86400) + " d";
  }

  function latency(v) {
    if (v === 0) return "0";
    if (v < 1e-3) return num(v * 1e6) + " µs";
    if (v < 1) return num(v * 1e3) + " ms";
    return num(v) + " s";
  }

  function breakerState(v) { return BREAKER_STATES[Math.round(v)] || num(v); }

  function pad(n) { return String(n).padStart(2, "0"); }

  function clock(t) {
    const d = new Date(t * 1000);
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (Math.abs(Date.now() - d.getTime()) < 86400000) return time;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
  }

  function ago(t) {
    const s = Date.now() / 1000 - t;
    return s < 0 ? "in " + age(-s) : age(s) + " ago";
  }

  function iso(t) {
    const d = new Date(t * 1000);
    return isNaN(d.getTime()) ? "" : d.toISOString();
  }

  // -- the charts: one per series group of /admin/series ---------------------------------

  const CHARTS = [
    { id: "requests", group: "requests", format: rate, order: ["2xx", "3xx", "4xx", "5xx"],
      colors: { "2xx": "#2e7d32", "3xx": "#1f77b4", "4xx": "#ef6c00", "5xx": "#c62828" },
      share: true },
    { id: "refusals", group: "refusals", format: rate },
    { id: "replays", group: "replays", format: rate, order: ["replayed", "mismatched"],
      colors: { replayed: "#1f77b4", mismatched: "#d62728" } },
    { id: "unknown", group: "unknown", format: count, order: ["keys", "oldest"],
      colors: { keys: "#d08a1e", oldest: "#5a4fcf" },
      names: { keys: "unknown keys", oldest: "oldest" }, scales: { oldest: "age" } },
    { id: "breakers", group: "breakers", format: breakerState, state: true },
    { id: "store-latency", group: "store_latency", format: latency },
    { id: "store-errors", group: "store_errors", format: rate },
    { id: "shed", group: "shed", format: rate },
    { id: "webhooks", group: "webhooks", format: age, hideEmpty: true },
    { id: "sagas", group: "sagas", format: count, hideEmpty: true },
  ];

  const SCALE_FORMAT = { age: age };

  // axis steps: whole numbers for counts, round durations for ages (uPlot's own otherwise)
  const COUNT_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6];
  const AGE_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400, 172800, 604800];
  const STEPS = new Map([[count, COUNT_STEPS], [age, AGE_STEPS]]);

  function labelsOf(spec, group) {
    const labels = Object.keys(group || {}).sort();
    if (!spec.order) return labels;
    const known = spec.order.filter((l) => labels.includes(l));
    return known.concat(labels.filter((l) => !spec.order.includes(l)));
  }

  function colorOf(spec, label, index) {
    return (spec.colors && spec.colors[label]) || PALETTE[index % PALETTE.length];
  }

  function lastIndex(values) {
    for (let i = values.length - 1; i >= 0; i--) {
      if (values[i] !== null && values[i] !== undefined) return i;
    }
    return -1;
  }

  function yRange(u, min, max) {
    return [0, max > 0 ? max * 1.1 : 1];
  }

  /** Room for an axis' longest value (uPlot's default cuts long ones such as "0.025/s"). */
  function axisSize(u, values) {
    const longest = (values || []).reduce((n, v) => Math.max(n, String(v).length), 0);
    return Math.max(40, 16 + 7 * longest);
  }

  function chartOptions(spec, labels, width) {
    const series = [{}];
    const scales = { x: { time: true } };
    const axes = [{ stroke: "#667085", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#d9dde3" } }];
    const used = new Set();
    labels.forEach((label, i) => {
      const scale = (spec.scales && spec.scales[label]) || "y";
      used.add(scale);
      const s = {
        label: label,
        scale: scale,
        stroke: colorOf(spec, label, i),
        width: 1.5,
        spanGaps: false,
        points: { show: false },
      };
      if (spec.state) s.paths = uPlot.paths.stepped({ align: 1 });
      series.push(s);
    });
    used.add("y");
    for (const scale of used) {
      const format = SCALE_FORMAT[scale] || spec.format;
      const axis = {
        scale: scale,
        stroke: "#667085",
        grid: { stroke: "#eef0f3", show: scale === "y" },
        ticks: { stroke: "#d9dde3" },
        size: axisSize,
        values: (u, splits) => splits.map((v) => (v === null ? "" : format(v))),
      };
      if (STEPS.has(format)) axis.incrs = STEPS.get(format);
      if (scale !== "y") axis.side = 1;
      if (spec.state) {
        scales[scale] = { range: [-0.15, 2.15] };
        axis.splits = () => [0, 1, 2];
      } else {
        scales[scale] = { range: yRange };
      }
      axes.push(axis);
    }
    return {
      width: width,
      height: CHART_HEIGHT,
      series: series,
      scales: scales,
      axes: axes,
      legend: { show: false },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      hooks: { setCursor: [(u) => updateLegend(u.surefoot, u.cursor.idx)] },
    };
  }

  /** One panel's chart: made again when its series change, else given new data. */
  class Panel {
    constructor(spec) {
      this.spec = spec;
      this.section = document.getElementById("panel-" + spec.id);
      this.target = this.section.querySelector(".chart");
      this.legend = this.section.querySelector(".legend");
      this.note = this.section.querySelector(".note");
      this.plot = null;
      this.key = null;
      this.labels = [];
      this.data = null;
      this.values = [];
    }

    render(times, group) {
      const labels = labelsOf(this.spec, group);
      const data = [times].concat(labels.map((l) => group[l]));
      const points = labels.reduce((n, l) => n + group[l].filter((v) => v !== null).length, 0);
      this.section.dataset.series = String(labels.length);
      this.section.dataset.points = String(points);
      if (this.spec.hideEmpty) this.section.hidden = labels.length === 0;
      if (this.section.hidden) {
        this.destroy();
        return;
      }
      this.section.classList.remove("failed");
      this.note.textContent = labels.length === 0 ? "Nothing to show: no such series." :
        points === 0 ? "No data in this range yet." : "";
      const key = labels.join("\u0000");
      if (this.plot === null || key !== this.key) {
        this.destroy();
        this.key = key;
        this.labels = labels;
        this.data = data;
        this.buildLegend();
        this.plot = new uPlot(chartOptions(this.spec, labels, this.width()), data, this.target);
        this.plot.surefoot = this;
      } else {
        this.data = data;
        this.plot.setData(data);
      }
      updateLegend(this, this.plot.cursor.idx);
    }

    failed(message) {
      this.section.classList.add("failed");
      this.note.textContent = message;
    }

    width() {
      return Math.max(200, Math.floor(this.target.clientWidth || this.section.clientWidth - 24));
    }

    resize() {
      if (this.plot !== null) this.plot.setSize({ width: this.width(), height: CHART_HEIGHT });
    }

    destroy() {
      if (this.plot !== null) this.plot.destroy();
      this.plot = null;
      this.key = null;
    }

    buildLegend() {
      this.legend.replaceChildren();
      this.values = this.labels.map((label, i) => {
        const swatch = el("span", { className: "swatch" });
        swatch.style.background = colorOf(this.spec, label, i);
        const value = el("span", { className: "value" });
        const name = (this.spec.names && this.spec.names[label]) || label;
        this.legend.append(el("li", {}, [swatch, el("span", { className: "name", text: name }), value]));
        return value;
      });
    }
  }

  /** Each series' value at the cursor, or its latest value when the cursor is away. */
  function updateLegend(panel, idx) {
    if (!panel || !panel.data) return;
    const times = panel.data[0];
    panel.labels.forEach((label, i) => {
      const values = panel.data[i + 1];
      const at = idx === null || idx === undefined ? lastIndex(values) : idx;
      const v = at >= 0 ? values[at] : null;
      const scale = panel.spec.scales && panel.spec.scales[label];
      const format = SCALE_FORMAT[scale] || panel.spec.format;
      let text = v === null || v === undefined ? "–" : format(v);
      if (panel.spec.share && v !== null && v !== undefined && at >= 0) {
        let total = 0;
        for (let j = 1; j < panel.data.length; j++) total += panel.data[j][at] || 0;
        if (total > 0) text += " (" + Math.round((100 * v) / total) + "%)";
      }
      panel.values[i].textContent = text;
      panel.values[i].title = at >= 0 && times[at] !== undefined ? clock(times[at]) : "";
    });
  }

  // -- DOM helpers -------------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else if (name === "title") node.title = value;
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function cell(text, className) {
    return el("td", className ? { className: className, text: text } : { text: text });
  }

  function safeUrl(text) {
    if (typeof text !== "string" || text === "") return null;
    try {
      const url = new URL(text, location.href);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (err) {
      return null;
    }
  }

  /** An alert's labels but its name (shown beside them). */
  function labelText(labels) {
    return Object.keys(labels || {}).filter((k) => k !== "alertname").sort()
      .map((k) => k + "=" + labels[k]).join(", ");
  }

  // -- the admin API -----------------------------------------------------------------------

  class AuthError extends Error {}

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  const state = {
    token: readStorage(TOKEN_KEY),
    range: RANGES.includes(readStorage(RANGE_KEY)) ? readStorage(RANGE_KEY) : "15m",
    topList: "refused",
    topWindow: null,
    policies: [],
    refreshes: 0,
    timer: null,
    running: false,
    again: false,
    silence: null,
  };
  state.topWindow = state.range;

  function readStorage(key) {
    try {
      return sessionStorage.getItem(key);
    } catch (err) {
      return null;
    }
  }

  function writeStorage(key, value) {
    try {
      if (value === null) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, value);
    } catch (err) {
      /* storage refused: the value lasts as long as the page */
    }
  }

  async function api(path, options) {
    if (!state.token) throw new AuthError("no token");
    const init = Object.assign({ cache: "no-store", credentials: "omit" }, options || {});
    init.headers = Object.assign({ Authorization: "Bearer " + state.token }, init.headers || {});
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new Error("cannot reach the admin API");
    }
    if (response.status === 401) {
      askToken("The admin API refused the token.");
      throw new AuthError("token refused");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && (body.detail || body.title);
      const message = typeof detail === "string" ? detail : path + ": HTTP " + response.status;
      throw new ApiError(message, response.status);
    }
    return body;
  }

  // -- the token ---------------------------------------------------------------------------

  function askToken(message) {
    state.token = null;
    writeStorage(TOKEN_KEY, null);
    clearTimeout(state.timer);
    document.getElementById("panels").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message || "";
    const dialog = document.getElementById("silence-dialog");
    if (dialog.open) dialog.close();
    const input = document.getElementById("token-input");
    input.value = "";
    input.focus();
  }

  function start() {
    document.getElementById("login").hidden = true;
    document.getElementById("panels").hidden = false;
    state.refreshes = 0;
    refresh();
  }

  // -- refreshing --------------------------------------------------------------------------

  const panels = CHARTS.map((spec) => new Panel(spec));

  function setStatus(text, failed) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(failed));
  }

  async function refresh() {
    if (!state.token) return;
    if (state.running) {
      state.again = true;
      return;
    }
    state.running = true;
    clearTimeout(state.timer);
    const errors = [];
    const note = (what) => (err) => {
      if (err instanceof AuthError) throw err;
      errors.push(what + ": " + err.message);
    };
    try {
      if (state.refreshes % CONFIG_EVERY === 0) await loadConfig().catch(note("config"));
      state.refreshes += 1;
      const range = state.range;
      await Promise.all([
        api("/admin/series?range=" + encodeURIComponent(range))
          .then(renderSeries)
          .then((unknown) => loadOldest(unknown).catch(note("unknown")))
          .catch((err) => {
            for (const panel of panels) panel.failed(err.message);
            note("series")(err);
          }),
        api("/admin/alerts").then(renderAlerts).catch(absent("panel-alerts", note("alerts"))),
        api("/admin/silences").then(renderSilences).catch(absent("panel-silences", note("silences"))),
        loadTops().catch(note("top")),
      ]);
      if (errors.length) setStatus(errors[0], true);
      else setStatus("Updated " + clock(Date.now() / 1000));
    } catch (err) {
      if (!(err instanceof AuthError)) setStatus(err.message, true);
    } finally {
      state.running = false;
      if (state.token) {
        if (state.again) {
          state.again = false;
          state.timer = setTimeout(refresh, 0);
        } else {
          state.timer = setTimeout(refresh, REFRESH_MS);
        }
      }
    }
  }

  /** A 404 (the feature is off) shown in the panel; any other failure passed to `other`. */
  function absent(id, other) {
    return (err) => {
      if (!(err instanceof ApiError) || err.status !== 404) return other(err);
      const section = document.getElementById(id);
      section.querySelector("tbody").replaceChildren();
      section.querySelector(".note").textContent = err.message;
    };
  }

  async function loadConfig() {
    const body = await api("/admin/config");
    const config = (body && body.config) || {};
    const rateLimit = config.rate_limit || {};
    const names = (rateLimit.policies || []).map((p) => p.name).filter((n) => typeof n === "string");
    // [identity] address_limits adds the "address" policy when no API keys are listed
    const identity = config.identity || {};
    const keys = (config.clients || []).some((c) => c.api_key || c.api_key_env);
    if ((identity.address_limits || []).length && names.length && !keys) names.push("address");
    state.policies = names;
    const source = document.getElementById("source");
    const file = String(config.source || "");
    source.textContent = file.split("/").pop() + (body && body.generation !== undefined ?
      " · generation " + body.generation : "");
    source.title = file;
  }

  function renderSeries(body) {
    const times = (body && body.times) || [];
    const groups = (body && body.series) || {};
    for (const policy of Object.keys(groups.refusals || {})) {
      if (!state.policies.includes(policy)) state.policies.push(policy);
    }
    for (const panel of panels) panel.render(times, groups[panel.spec.group] || {});
    return groups.unknown || {};
  }

  /** The oldest unknown outcome's age from /admin/unknown, when the series do not have it
   * (``oldest`` in the group ``unknown``) and there are unknown keys. */
  async function loadOldest(unknown) {
    const stat = document.getElementById("unknown-oldest");
    const keys = unknown.keys || [];
    const at = lastIndex(keys);
    if (unknown.oldest || at < 0 || !(keys[at] > 0)) {
      stat.textContent = "";
      return;
    }
    const limit = 1000;
    const body = await api("/admin/unknown?limit=" + limit);
    const listed = (body && body.unknown) || [];
    const ages = listed.map((r) => r.age).filter((a) => typeof a === "number");
    if (!ages.length) {
      stat.textContent = "";
      return;
    }
    const more = listed.length >= limit ? " of the first " + limit + " listed" : "";
    stat.textContent = "Oldest now: " + age(Math.max(...ages)) + more + ".";
  }

  // -- top offenders -----------------------------------------------------------------------

  function top(list, policy) {
    let path = "/admin/top?list=" + encodeURIComponent(list);
    if (policy !== null) path += "&policy=" + encodeURIComponent(policy);
    const limit = policy === null ? TOP_KEY_ITEMS : TOP_ITEMS;
    return api(path + "&window=" + encodeURIComponent(state.topWindow) + "&limit=" + limit);
  }

  function topBlock(title, list, items, body, error) {
    const block = el("div", { className: "top-block" });
    block.dataset.list = list;
    block.append(el("h3", { text: title }));
    if (error) {
      block.append(el("p", { className: "caption error", text: error }));
      return block;
    }
    const total = body && typeof body.total === "number" ? num(body.total) : "0";
    let caption = "total " + total + " in " + state.topWindow;
    if (body && body.error_bound) caption += " · counts within ±" + num(body.error_bound);
    block.append(el("p", { className: "caption", text: caption }));
    const shown = (items || []).slice(0, list === "reused" || list === "unknown" ? TOP_KEY_ITEMS : TOP_ITEMS);
    if (!shown.length) {
      block.append(el("p", { className: "muted", text: "Nobody in this window." }));
      return block;
    }
    const max = Math.max(...shown.map((i) => i.count), 1e-9);
    const bars = el("ol", { className: "bars" });
    bars.dataset.list = list;
    for (const item of shown) {
      const who = item.client || item.principal;
      const name = String(list === "reused" && item.store_key ? who + " " + item.store_key : who);
      const bar = el("span", { className: "bar" });
      bar.style.width = Math.max(0, Math.min(100, (100 * item.count) / max)) + "%";
      let value = num(item.count);
      if (item.error > 0) value += " ±" + num(item.error);
      const title = (name === String(who) ? name : name + " (" + who + ")") + ": " + value;
      bars.append(el("li", { title: title }, [
        el("span", { className: "bar-label", text: name }),
        el("span", { className: "bar-track" }, [bar]),
        el("span", { className: "bar-value", text: value }),
      ]));
    }
    block.append(bars);
    return block;
  }

  async function topSettled(list, policy) {
    try {
      const body = await top(list, policy);
      return { body: body, error: null };
    } catch (err) {
      if (err instanceof AuthError) throw err;
      return { body: null, error: err.message };
    }
  }

  async function loadTops() {
    const list = state.topList;
    const policies = state.policies.slice();
    const [perPolicy, reused, unknown] = await Promise.all([
      Promise.all(policies.map((p) => topSettled(list, p))),
      topSettled("reused", null),
      topSettled("unknown", null),
    ]);
    if (list !== state.topList) return; // the list changed meanwhile: its own refresh follows
    const section = document.getElementById("panel-top");
    const blocks = policies.map((p, i) =>
      topBlock(p, list, perPolicy[i].body && perPolicy[i].body.items, perPolicy[i].body, perPolicy[i].error));
    section.querySelector(".tops").replaceChildren(...blocks);
    section.querySelector(".note").textContent = policies.length ? "" : "No rate-limit policy in the configuration.";
    section.dataset.items = String(perPolicy.reduce((n, r) => n + ((r.body && r.body.items) || []).length, 0));
    const keys = document.getElementById("panel-top-keys");
    keys.querySelector(".tops").replaceChildren(
      topBlock("Idempotency keys reused with another body", "reused", reused.body && reused.body.items, reused.body, reused.error),
      topBlock("Clients with unknown outcomes", "unknown", unknown.body && unknown.body.items, unknown.body, unknown.error),
    );
  }

  // -- alerts and silences -----------------------------------------------------------------

  function renderAlerts(body) {
    const alerts = (body && body.alerts) || [];
    const section = document.getElementById("panel-alerts");
    const rows = alerts.map((alert) => {
      const silenced = (alert.silenced_by || []).map(String);
      const row = el("tr", silenced.length ? { className: "silenced" } : {});
      row.dataset.alertname = String(alert.alertname);
      row.dataset.silenced = silenced.length ? "true" : "false";
      const stateText = String(alert.state || "");
      row.append(el("td", {}, [el("span", { className: "state state-" + stateText.replace(/[^a-z]/g, ""), text: stateText })]));
      row.append(cell(String(alert.alertname)));
      row.append(cell(labelText(alert.labels), "labels"));
      const since = el("td", { text: typeof alert.since === "number" ? ago(alert.since) : "" });
      if (typeof alert.since === "number") since.title = iso(alert.since);
      row.append(since);
      row.append(cell(typeof alert.value === "number" ? num(alert.value) : String(alert.value ?? "")));
      row.append(cell(String(alert.summary || ""), "summary"));
      const runbook = el("td");
      const url = safeUrl(alert.runbook_url);
      if (url !== null) {
        runbook.append(el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "runbook" }));
      }
      row.append(runbook);
      const by = cell(silenced.map((id) => id.slice(0, 8)).join(", "), "silenced-by");
      by.title = silenced.join(", ");
      row.append(by);
      const button = el("button", { type: "button", className: "silence", text: "Silence" });
      button.addEventListener("click", () => openSilence(alert));
      row.append(el("td", {}, [button]));
      return row;
    });
    section.querySelector("tbody").replaceChildren(...rows);
    section.querySelector(".note").textContent = rows.length ? "" : "No alerts.";
    const firing = alerts.filter((a) => a.state === "firing" && !(a.silenced_by || []).length).length;
    const badge = document.getElementById("firing");
    badge.hidden = firing === 0;
    badge.textContent = firing + " firing";
  }

  function renderSilences(body) {
    const now = Date.now() / 1000;
    const silences = ((body && body.silences) || []).slice();
    // active and pending first, the latest to end first
    silences.sort((a, b) => (b.ends_at > now) - (a.ends_at > now) || b.ends_at - a.ends_at);
    const section = document.getElementById("panel-silences");
    const rows = silences.map((silence) => {
      const id = String(silence.id);
      const live = silence.ends_at > now;
      const label = silence.active ? "active" : live ? "pending" : "expired";
      const row = el("tr");
      row.dataset.id = id;
      row.dataset.state = label;
      row.append(el("td", {}, [el("span", { className: "state state-" + label, text: label })]));
      const matchers = (silence.matchers || []).map((m) => m.name + m.op + JSON.stringify(String(m.value)));
      row.append(cell(matchers.join(", "), "labels"));
      const starts = cell(clock(silence.starts_at));
      starts.title = iso(silence.starts_at);
      const ends = cell(clock(silence.ends_at) + (live ? " (" + ago(silence.ends_at) + ")" : ""));
      ends.title = iso(silence.ends_at);
      const shortId = cell(id.slice(0, 8), "labels");
      shortId.title = id;
      row.append(starts, ends, cell(String(silence.comment || "")), cell(String(silence.created_by || "")), shortId);
      const action = el("td");
      if (live) {
        const button = el("button", { type: "button", className: "expire", text: "Expire" });
        button.addEventListener("click", () => expire(id, button));
        action.append(button);
      }
      row.append(action);
      return row;
    });
    section.querySelector("tbody").replaceChildren(...rows);
    section.querySelector(".note").textContent = rows.length ? "" : "No silences.";
  }

  async function expire(id, button) {
    button.disabled = true;
    try {
      await api("/admin/silences/" + encodeURIComponent(id), { method: "DELETE" });
      setStatus("Silence " + id + " expired");
      refresh();
    } catch (err) {
      button.disabled = false;
      if (!(err instanceof AuthError)) setStatus("Expire " + id + ": " + err.message, true);
    }
  }

  function matcherRow(name, op, value) {
    const ops = el("select", { "aria-label": "operator", className: "op" });
    for (const o of ["=", "!=", "=~", "!~"]) ops.append(el("option", { text: o }));
    ops.value = op;
    const nameInput = el("input", { "aria-label": "label name", className: "name", required: "" });
    nameInput.value = name;
    const valueInput = el("input", { "aria-label": "value", className: "value" });
    valueInput.value = value;
    const remove = el("button", { type: "button", title: "Remove this matcher", text: "×" });
    const row = el("div", { className: "matcher" }, [nameInput, ops, valueInput, remove]);
    remove.addEventListener("click", () => row.remove());
    return row;
  }

  function openSilence(alert) {
    const dialog = document.getElementById("silence-dialog");
    const rows = [matcherRow("alertname", "=", String(alert.alertname))];
    for (const name of Object.keys(alert.labels || {}).sort()) {
      if (name !== "alertname") rows.push(matcherRow(name, "=", String(alert.labels[name])));
    }
    document.getElementById("matchers").replaceChildren(...rows);
    document.getElementById("silence-duration").value = "2h";
    document.getElementById("silence-comment").value = "";
    document.getElementById("silence-author").value = readStorage(AUTHOR_KEY) || "";
    document.getElementById("silence-error").textContent = "";
    dialog.showModal();
    document.getElementById("silence-comment").focus();
  }

  async function createSilence(event) {
    event.preventDefault();
    const error = document.getElementById("silence-error");
    const matchers = Array.from(document.querySelectorAll("#matchers .matcher")).map((row) => ({
      name: row.querySelector(".name").value.trim(),
      op: row.querySelector(".op").value,
      value: row.querySelector(".value").value,
    }));
    if (!matchers.length) {
      error.textContent = "A silence needs at least one matcher.";
      return;
    }
    const author = document.getElementById("silence-author").value.trim();
    const body = {
      matchers: matchers,
      duration: document.getElementById("silence-duration").value.trim(),
      comment: document.getElementById("silence-comment").value.trim(),
      created_by: author,
    };
    const submit = event.submitter || null;
    if (submit) submit.disabled = true;
    try {
      const made = await api("/admin/silences", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      writeStorage(AUTHOR_KEY, author);
      document.getElementById("silence-dialog").close();
      setStatus("Silence " + String(made && made.id) + " created");
      refresh();
    } catch (err) {
      if (!(err instanceof AuthError)) error.textContent = err.message;
    } finally {
      if (submit) submit.disabled = false;
    }
  }

  // -- wiring ------------------------------------------------------------------------------

  function setRange(range) {
    state.range = range;
    state.topWindow = range;
    writeStorage(RANGE_KEY, range);
    document.getElementById("top-window").value = range;
    for (const button of document.querySelectorAll("#range button")) {
      button.setAttribute("aria-pressed", String(button.dataset.range === range));
    }
  }

  function wire() {
    document.getElementById("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = document.getElementById("token-input").value.trim();
      if (!token) return;
      state.token = token;
      writeStorage(TOKEN_KEY, token);
      start();
    });
    document.getElementById("forget").addEventListener("click", () => askToken(""));
    for (const button of document.querySelectorAll("#range button")) {
      button.addEventListener("click", () => {
        setRange(button.dataset.range);
        refresh();
      });
    }
    document.getElementById("top-list").addEventListener("change", (event) => {
      state.topList = event.target.value;
      refresh();
    });
    document.getElementById("top-window").addEventListener("change", (event) => {
      state.topWindow = event.target.value;
      refresh();
    });
    document.getElementById("add-matcher").addEventListener("click", () => {
      document.getElementById("matchers").append(matcherRow("", "=", ""));
    });
    document.getElementById("silence-cancel").addEventListener("click", () => {
      document.getElementById("silence-dialog").close();
    });
    document.getElementById("silence-form").addEventListener("submit", createSilence);
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => panels.forEach((p) => p.resize()), 100);
    });
  }

  wire();
  setRange(state.range);
  if (state.token) start();
  else askToken("");
})();
