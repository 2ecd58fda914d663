// clickstay dashboards: the helpers every job's page shares (served as /assets/dashboard.js).
// No build step: plain browser JavaScript over the vendored uPlot (/assets/uPlot.iife.min.js).
//
// - Dash.parseMetrics(text): Prometheus text format -> Map(name -> [{labels, value}])
// - Dash.total(metrics, name, labels) and Dash.byLabel(metrics, name, label): read samples
// - Dash.Rates: per-second rates of counters sampled by the page
// - Dash.lineChart / Dash.barChart: small uPlot wrappers that follow a changing set of series
// - Dash.every(ms, step): runs `step` again `ms` after each run ends (never two at once)
// - Dash.getJson(url, token): a same-origin GET, with `Authorization: Bearer` when a token is set
// - Dash.fillTable(tbody, rows): rows of cells with data-* attributes (what the tests read)
"use strict";

const Dash = (() => {
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
  // Points kept by a line chart: five minutes at one sample a second.
  const KEEP = 300;

  function unescapeLabel(text) {
    return text.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }

  function parseValue(text) {
    if (text === "+Inf") return Infinity;
    if (text === "-Inf") return -Infinity;
    return Number(text);
  }

  // Samples of Prometheus's text format (version 0.0.4), by metric name; comments skipped.
  function parseMetrics(text) {
    const metrics = new Map();
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      const trimmed = raw.trim();
      if (trimmed === "" || trimmed.startsWith("#")) continue;
      const m = line.exec(trimmed);
      if (!m) continue;
      const labels = {};
      for (const [, key, value] of (m[2] || "").matchAll(label)) labels[key] = unescapeLabel(value);
      if (!metrics.has(m[1])) metrics.set(m[1], []);
      metrics.get(m[1]).push({ labels, value: parseValue(m[3]) });
    }
    return metrics;
  }

  function matches(sample, labels) {
    return Object.entries(labels).every(([key, value]) => sample.labels[key] === value);
  }

  // The sum of `name`'s samples whose labels include `labels`; null when there is none.
  function total(metrics, name, labels = {}) {
    const samples = (metrics.get(name) || []).filter((s) => matches(s, labels));
    return samples.length === 0 ? null : samples.reduce((sum, s) => sum + s.value, 0);
  }

  // `name`'s samples summed by the value of `label`: {labelValue: value}, sorted by label.
  function byLabel(metrics, name, label) {
    const out = {};
    for (const s of metrics.get(name) || []) {
      const key = s.labels[label] ?? "";
      out[key] = (out[key] || 0) + s.value;
    }
    const sorted = {};
    for (const key of Object.keys(out).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))) sorted[key] = out[key];
    return sorted;
  }

  // Per-second rates of counters sampled now and then: rate(key, value, seconds) is the
  // increase since the previous sample of `key` divided by the time between them (null for
  // the first sample, and after a reset, when the counter went down).
  class Rates {
    constructor() {
      this.last = new Map();
    }
    rate(key, value, seconds) {
      const previous = this.last.get(key);
      this.last.set(key, { value, seconds });
      if (!previous || value < previous.value || seconds <= previous.seconds) return null;
      return (value - previous.value) / (seconds - previous.seconds);
    }
  }

  function width(el) {
    return Math.max(320, Math.floor(el.clientWidth || 560));
  }

  // A line chart over time (x: seconds since the epoch) of named series; a new series name
  // rebuilds the chart with one more line (a partition, a shard or an outcome appeared).
  function lineChart(el, title, unit) {
    let chart = null;
    let names = [];
    const times = [];
    const columns = new Map();
    function build() {
      if (chart) chart.destroy();
      const series = [{}].concat(
        names.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true })),
      );
      const data = [times.slice()].concat(names.map((name) => columns.get(name).slice()));
      chart = new uPlot(
        { title, width: width(el), height: 220, series, axes: [{}, { label: unit, size: 90 }], scales: { x: { time: true } } },
        data,
        el,
      );
    }
    return {
      push(seconds, values) {
        const fresh = Object.keys(values).filter((name) => !columns.has(name));
        for (const name of fresh) columns.set(name, times.map(() => null));
        times.push(seconds);
        for (const [name, column] of columns) column.push(values[name] ?? null);
        if (times.length > KEEP) {
          times.shift();
          for (const column of columns.values()) column.shift();
        }
        if (fresh.length > 0 || !chart) {
          names = [...columns.keys()];
          build();
        } else {
          chart.setData([times].concat(names.map((name) => columns.get(name))));
        }
      },
    };
  }

  // A bar chart of labelled values (e.g. the top ads), in the order given.
  function barChart(el, title, unit) {
    let chart = null;
    let labels = [];
    function build() {
      chart = new uPlot(
        {
          title,
          width: width(el),
          height: 260,
          scales: {
            x: { time: false, range: () => [-0.5, Math.max(labels.length, 1) - 0.5] },
            y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] },
          },
          axes: [
            { label: "ad", splits: () => labels.map((_, i) => i), values: (u, splits) => splits.map((i) => labels[i] ?? "") },
            { label: unit, size: 70 },
          ],
          series: [{}, { label: unit, fill: COLOURS[0] + "cc", stroke: COLOURS[0], paths: uPlot.paths.bars({ size: [0.7, 80] }), points: { show: false } }],
          legend: { show: false },
        },
        [[], []],
        el,
      );
    }
    return {
      set(newLabels, values) {
        labels = newLabels.map(String);
        if (!chart) build();
        chart.setData([labels.map((_, i) => i), values]);
      },
    };
  }

  // Runs `step` now and again `ms` after each run ends; a failed run's error goes to the
  // element with id `status`.
  function every(ms, step) {
    const run = async () => {
      try {
        await step();
      } catch (error) {
        setText("status", `error: ${error.message || error}`);
      }
      setTimeout(run, ms);
    };
    run();
  }

  // A same-origin GET of JSON: {status, body} (body null when it is not JSON).
  async function getJson(url, token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, body };
  }

  async function getMetrics() {
    const response = await fetch("/metrics", { cache: "no-store" });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    return parseMetrics(await response.text());
  }

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  // Replaces `tbody`'s rows: each row is {cells: [text...], data: {key: value}} and its values
  // land in the row's data-* attributes, where a test reads them.
  function fillTable(tbody, rows) {
    tbody.replaceChildren(
      ...rows.map(({ cells, data }) => {
        const tr = document.createElement("tr");
        for (const [key, value] of Object.entries(data || {})) tr.dataset[key] = String(value);
        for (const cell of cells) {
          const td = document.createElement("td");
          td.textContent = String(cell);
          tr.appendChild(td);
        }
        return tr;
      }),
    );
  }

  function format(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Math.abs(value) >= 100 ? Math.round(value).toLocaleString("en") : value.toFixed(digits);
  }

  return { parseMetrics, total, byLabel, Rates, lineChart, barChart, every, getJson, getMetrics, setText, fillTable, format, COLOURS };
})();
