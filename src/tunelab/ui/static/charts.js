// tunelab ui: the training curves, drawn with uPlot (vendored under static/vendor/uplot, MIT; nothing from a CDN).
// Each series is its own chart (training loss, validation loss, validation score, learning rate): drag to zoom,
// double-click to reset, the values under the cursor in the legend, cursors synchronised across the charts.
// A run page polls its progress while it trains; the compare page overlays one line per run.
"use strict";

const SERIES = {
  train_loss: { title: "training loss", axis: "loss", loss: true },
  validation_loss: { title: "validation loss", axis: "loss", loss: true, points: true },
  validation_score: { title: "validation score", axis: "score", points: true },
  lr: { title: "learning rate", axis: "learning rate" },
};
const COLOURS = ["#2458a6", "#d07000", "#1f7a3a", "#8e24aa", "#b3261e", "#00838f"];

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(values, weight) {
  if (!weight) return values.slice();
  let last = 0, count = 0;
  return values.map((value) => {
    if (value === null || value === undefined) return value;
    last = last * weight + (1 - weight) * value;
    count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}

function chartWidth(holder) {
  return Math.max(280, Math.floor(holder.getBoundingClientRect().width) - 4);
}

function chartOptions(holder, key, lines, logScale) {
  const spec = SERIES[key];
  return {
    title: holder.dataset.title || spec.title,
    width: chartWidth(holder),
    height: 230,
    cursor: { sync: { key: "tunelab-curves" }, drag: { x: true, y: false } },
    scales: { x: { time: false }, y: { distr: logScale && spec.loss ? 3 : 1 } },
    axes: [
      { label: "optimizer step", size: 36, grid: { stroke: "#eef1f4" } },
      { label: holder.dataset.axis || spec.axis, size: 62, grid: { stroke: "#eef1f4" },
        values: (u, ticks) => ticks.map((v) => (v === null || v === undefined ? "" : Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(1) : +v.toPrecision(4))) },
    ],
    series: [{ label: "step", value: (u, v) => (v === null ? "-" : Math.round(v)) }].concat(lines),
    legend: { live: true },
    // A zoomed chart keeps its window while new points arrive; a double-click (uPlot's reset) lets it follow again.
    hooks: { setSelect: [(u) => { if (u.select.width > 0) holder.dataset.zoomed = "yes"; }] },
  };
}

function lineSeries(label, colour, options) {
  return Object.assign({
    label: label, stroke: colour, width: 1.6, spanGaps: true,
    value: (u, v) => (v === null || v === undefined ? "-" : +v.toPrecision(5)),
  }, options || {});
}

// One chart per series key: (re)built when its lines change, else given new data.
class CurveChart {
  constructor(holder, key) {
    this.holder = holder;
    this.key = key;
    this.plot = null;
    this.signature = "";
  }
  draw(lines, data, logScale) {
    const signature = lines.map((l) => l.label).join("|") + "|" + logScale;
    const empty = !data.length || !data[0].length;
    this.holder.classList.toggle("chart-none", empty);
    if (empty) {
      if (this.plot) { this.plot.destroy(); this.plot = null; this.holder.uplot = null; }
      this.holder.dataset.empty = "yes";
      this.holder.textContent = (SERIES[this.key].title) + ": nothing logged yet";
      this.signature = "";
      return;
    }
    delete this.holder.dataset.empty;
    if (!this.plot || signature !== this.signature) {
      if (this.plot) this.plot.destroy();
      this.holder.textContent = "";
      this.plot = new uPlot(chartOptions(this.holder, this.key, lines, logScale), data, this.holder);
      this.plot.over.addEventListener("dblclick", () => { delete this.holder.dataset.zoomed; });
      this.holder.uplot = this.plot;  // for a person in the browser console, and for the browser tests
      this.signature = signature;
    } else {
      this.plot.setData(data, this.holder.dataset.zoomed !== "yes");
    }
  }
  resize() {
    if (this.plot) this.plot.setSize({ width: chartWidth(this.holder), height: 230 });
  }
}

function pairs(points) {
  return [points.map((p) => p[0]), points.map((p) => p[1])];
}

// One run: the training loss raw (faint) and smoothed, the other series as they are.
function runChartData(key, state, smoothing) {
  const points = (state.series || {})[key] || [];
  const [xs, ys] = pairs(points);
  if (key === "train_loss") {
    return { lines: [lineSeries("raw", "rgba(36,88,166,0.28)", { width: 1 }), lineSeries("smoothed", COLOURS[0], { width: 2 })],
      data: [xs, ys, smooth(ys, smoothing)] };
  }
  const spec = SERIES[key];
  const colour = { validation_loss: COLOURS[1], validation_score: COLOURS[2], lr: COLOURS[3] }[key];
  const label = key === "validation_score" ? (state.score_name || spec.title) : spec.title;
  return { lines: [lineSeries(label, colour, spec.points ? { points: { show: true, size: 6 } } : {})], data: [xs, ys] };
}

// Several runs: one line per run on a shared step axis (uPlot.join leaves the gaps to spanGaps).
function overlayChartData(key, states, names, smoothing) {
  const tables = states.map((state) => {
    const [xs, ys] = pairs(((state || {}).series || {})[key] || []);
    return [xs, key === "train_loss" ? smooth(ys, smoothing) : ys];
  });
  if (!tables.some((t) => t[0].length)) return { lines: [], data: [] };
  const data = uPlot.join(tables.map((t) => (t[0].length ? t : [[0], [null]])));
  const spec = SERIES[key];
  const lines = names.map((name, index) => lineSeries(name, COLOURS[index % COLOURS.length], spec.points ? { points: { show: true, size: 5 } } : {}));
  return { lines: lines, data: data };
}

function setUpCharts(box, load) {
  const charts = Array.from(box.querySelectorAll("[data-chart]")).map((holder) => new CurveChart(holder, holder.dataset.chart));
  const slider = box.querySelector("[data-smoothing]");
  const logBox = box.querySelector("[data-log]");
  let last = null;
  function render() {
    if (!last) return;
    const smoothing = slider ? parseFloat(slider.value) : 0;
    const shown = box.querySelector("[data-smoothing-value]");
    if (shown) shown.textContent = smoothing.toFixed(2);
    charts.forEach((chart) => {
      const made = last(chart.key, smoothing);
      chart.draw(made.lines, made.data, logBox && logBox.checked);
    });
  }
  [slider, logBox].forEach((input) => input && input.addEventListener("input", render));
  window.addEventListener("resize", () => charts.forEach((chart) => chart.resize()));
  return (makeData) => { last = makeData; render(); };
}

function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (s % 60) + " s";
}

// The live panel of a running run: step of total, ETA, tokens/s, the baselines already evaluated or skipped (with why).
function renderLive(state) {
  const panel = document.getElementById("live");
  if (!panel) return;
  const live = state.live;
  const running = state.status === "running" || state.status === "created" || state.job_status === "running";
  panel.classList.toggle("hidden", !(running || (live && live.training)));
  if (live) {
    const total = live.total_steps ? " of " + live.total_steps : "";
    const share = live.total_steps ? " (" + Math.round((100 * live.step) / live.total_steps) + " %)" : "";
    setText("live-step", live.training ? live.step + total + share : "training done: " + live.step + " steps");
    setText("live-eta", live.training ? formatSeconds(live.eta_seconds) : "-");
    setText("live-rate", live.tokens_per_second ? Math.round(live.tokens_per_second) + " real tokens/s" : "-");
    const bar = document.getElementById("live-bar");
    if (bar && live.total_steps) { bar.max = live.total_steps; bar.value = live.step; }
  } else {
    setText("live-step", "not training yet (" + ((state.steps || []).slice(-1)[0] || "starting") + " done)");
  }
  const list = document.getElementById("live-baselines");
  if (list) {
    list.innerHTML = "";
    (state.baselines || []).forEach((b) => {
      const item = document.createElement("li");
      if (b.skipped) {
        item.className = "skipped";
        item.textContent = b.name + ": skipped (" + b.skipped + ")";
      } else {
        item.textContent = b.name + ": " + (b.metric || "") + " " + (b.value === null || b.value === undefined ? "-" : (+b.value).toPrecision(4));
      }
      list.appendChild(item);
    });
    if (!(state.baselines || []).length) list.innerHTML = "<li class='empty'>none evaluated or skipped yet</li>";
  }
}

function setUpRunCharts() {
  document.querySelectorAll(".charts[data-progress-url]").forEach((box) => {
    const draw = setUpCharts(box);
    const url = box.dataset.progressUrl;
    function update() {
      return getJSON(url).then((state) => {
        draw((key, smoothing) => runChartData(key, state, smoothing));
        renderSteps(state.steps);
        renderLive(state);
        if (state.status) setText("run-status", state.status);
        if (state.job_status !== undefined) updateJob(state);
        const going = state.job_status !== undefined ? state.job_status === "running" : state.status === "running" || state.status === "created";
        if (going && box.dataset.live === "yes") setTimeout(update, 1500);
      }).catch(() => setTimeout(update, 3000));
    }
    update();
  });
}

function setUpCompareCharts() {
  document.querySelectorAll(".charts[data-runs]").forEach((box) => {
    const runs = JSON.parse(box.dataset.runs);
    const draw = setUpCharts(box);
    Promise.all(runs.map((run) => getJSON("/api/runs/" + run.id + "/progress").catch(() => null))).then((states) => {
      draw((key, smoothing) => overlayChartData(key, states, runs.map((r) => r.name), smoothing));
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (typeof uPlot === "undefined") return;
  setUpRunCharts();
  setUpCompareCharts();
});
