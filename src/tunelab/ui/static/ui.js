// tunelab ui: the little the pages need in the browser (no framework, no build step).
"use strict";

function post(url, body) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Tunelab-UI": "1" },
    body: JSON.stringify(body || {}),
  }).then(async (response) => {
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error((data.error || response.statusText) + (data.hint ? " (fix: " + data.hint + ")" : ""));
    }
    return data;
  });
}

function getJSON(url) {
  return fetch(url).then((response) => response.json());
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

function percent(value) {
  return (value * 100).toFixed(1) + "%";
}

// -- the runs table: sort, filter, select to compare ------------------------------------------

function setUpRunsTable() {
  const table = document.getElementById("runs");
  if (!table) return;
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  table.querySelectorAll("th").forEach((th, index) => {
    if (th.dataset.type === "none") return;
    th.classList.add("sort");
    th.addEventListener("click", () => {
      const ascending = th.dataset.order !== "asc";
      table.querySelectorAll("th").forEach((other) => delete other.dataset.order);
      th.dataset.order = ascending ? "asc" : "desc";
      const numeric = th.dataset.type === "number";
      const key = (row) => {
        const cell = row.cells[index];
        if (numeric) {
          const value = parseFloat(cell.dataset.value);
          return isNaN(value) ? -Infinity : value;
        }
        return cell.textContent.trim().toLowerCase();
      };
      const sorted = Array.from(body.rows).sort((a, b) => {
        const x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
      });
      sorted.forEach((row) => body.appendChild(row));
    });
  });
  const text = document.getElementById("filter");
  const task = document.getElementById("filter-task");
  const status = document.getElementById("filter-status");
  function applyFilter() {
    const words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    rows.forEach((row) => {
      const content = row.textContent.toLowerCase();
      const visible = words.every((word) => content.includes(word)) &&
        (!task.value || row.dataset.task === task.value) && (!status.value || row.dataset.status === status.value);
      row.hidden = !visible;
      if (visible) shown += 1;
    });
    setText("shown-count", shown + " of " + rows.length + " runs");
  }
  [text, task, status].forEach((input) => input.addEventListener("input", applyFilter));
  applyFilter();
  const button = document.getElementById("compare-selected");
  const boxes = Array.from(table.querySelectorAll(".select-run"));
  boxes.forEach((box) => box.addEventListener("change", () => {
    button.disabled = boxes.filter((b) => b.checked).length < 2;
  }));
  button.addEventListener("click", () => {
    const selected = boxes.filter((b) => b.checked).map((b) => "runs=" + encodeURIComponent(b.value));
    window.location = "/compare?" + selected.join("&");
  });
}

// -- the loss curve, as inline SVG, polled while the run trains --------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";

function svgNode(name, attributes) {
  const node = document.createElementNS(SVG_NS, name);
  Object.entries(attributes).forEach(([key, value]) => node.setAttribute(key, value));
  return node;
}

function drawLoss(svg, train, validation) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = 640, height = 260, left = 56, right = 12, top = 12, bottom = 36;
  const points = train.concat(validation);
  if (!points.length) {
    const empty = svgNode("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-label" });
    empty.textContent = "no loss logged yet";
    svg.appendChild(empty);
    return;
  }
  const steps = points.map((p) => p[0]), losses = points.map((p) => p[1]);
  let minX = Math.min(...steps), maxX = Math.max(...steps), minY = Math.min(...losses), maxY = Math.max(...losses);
  if (maxX === minX) maxX = minX + 1;
  if (maxY === minY) { maxY += 0.5; minY -= 0.5; }
  const x = (step) => left + ((step - minX) / (maxX - minX)) * (width - left - right);
  const y = (loss) => top + (1 - (loss - minY) / (maxY - minY)) * (height - top - bottom);
  svg.appendChild(svgNode("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }));
  svg.appendChild(svgNode("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }));
  [[minY, height - bottom], [maxY, top + 10]].forEach(([value, position]) => {
    const label = svgNode("text", { x: left - 6, y: position, "text-anchor": "end", class: "axis-label" });
    label.textContent = value.toFixed(3);
    svg.appendChild(label);
  });
  [[minX, left, "start"], [maxX, width - right, "end"]].forEach(([value, position, anchor]) => {
    const label = svgNode("text", { x: position, y: height - bottom + 16, "text-anchor": anchor, class: "axis-label" });
    label.textContent = "step " + Math.round(value);
    svg.appendChild(label);
  });
  const caption = svgNode("text", { x: (left + width) / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" });
  caption.textContent = "optimizer step";
  svg.appendChild(caption);
  if (train.length) {
    svg.appendChild(svgNode("polyline", { points: train.map((p) => x(p[0]) + "," + y(p[1])).join(" "), class: "train-line" }));
  }
  if (validation.length) {
    svg.appendChild(svgNode("polyline", { points: validation.map((p) => x(p[0]) + "," + y(p[1])).join(" "), class: "validation-line" }));
    validation.forEach((p) => svg.appendChild(svgNode("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, class: "validation-point" })));
  }
}

function renderSteps(steps) {
  const list = document.getElementById("steps");
  if (!list || !steps) return;
  list.innerHTML = "";
  steps.forEach((step) => {
    const item = document.createElement("li");
    item.className = "done";
    item.textContent = step;
    list.appendChild(item);
  });
}

function setUpLoss() {
  document.querySelectorAll(".loss").forEach((box) => {
    const svg = box.querySelector("svg");
    const url = box.dataset.progressUrl;
    function update() {
      return getJSON(url).then((state) => {
        drawLoss(svg, state.train || [], state.validation || []);
        box.querySelector(".loss-points").textContent = "(" + (state.train || []).length + " training points, " + (state.validation || []).length + " validation)";
        renderSteps(state.steps);
        if (state.status) setText("run-status", state.status);
        if (state.job_status !== undefined) updateJob(state);
        const going = state.job_status !== undefined ? state.job_status === "running" : state.status === "running" || state.status === "created";
        if (going && box.dataset.live === "yes") setTimeout(update, 1500);
      }).catch(() => setTimeout(update, 3000));
    }
    update();
  });
}

// -- a started run -------------------------------------------------------------------------------

function updateJob(state) {
  setText("job-status", state.job_status);
  const status = document.getElementById("job-status");
  if (status) status.className = "status-" + state.job_status;
  setText("job-log", state.log || "");
  setText("job-verdict", state.verdict || "");
  const link = document.getElementById("run-link");
  if (link && state.run_id) {
    link.href = "/runs/" + state.run_id;
    link.classList.remove("hidden");
  }
  const cancel = document.getElementById("cancel-button");
  if (cancel) cancel.disabled = state.job_status !== "running";
}

function setUpJob() {
  const job = document.getElementById("job");
  if (!job) return;
  document.getElementById("cancel-button").addEventListener("click", () => {
    post("/api/jobs/" + job.dataset.job + "/cancel").then(updateJob);
  });
}

// -- start a run: the estimate first ----------------------------------------------------------

function setUpStart() {
  const form = document.getElementById("start-form");
  if (!form) return;
  const body = () => ({
    config: document.getElementById("config-path").value,
    overrides: document.getElementById("overrides").value,
    calibrate: document.getElementById("calibrate").checked,
  });
  const estimateButton = document.getElementById("estimate-button");
  const startButton = document.getElementById("start-button");
  form.addEventListener("input", () => { startButton.disabled = true; });
  estimateButton.addEventListener("click", () => {
    setText("start-error", "");
    estimateButton.disabled = true;
    estimateButton.textContent = "1. Estimating…";
    post("/api/estimate", body()).then((result) => {
      setText("estimate-run", result.run);
      const table = document.getElementById("estimate-table");
      table.innerHTML = "";
      result.lines.forEach(([name, value]) => {
        const row = table.insertRow();
        const head = document.createElement("th");
        head.textContent = name;
        row.appendChild(head);
        row.insertCell().textContent = value;
      });
      document.getElementById("estimate-result").classList.remove("hidden");
      startButton.disabled = false;
    }).catch((error) => setText("start-error", error.message)).finally(() => {
      estimateButton.disabled = false;
      estimateButton.textContent = "1. Estimate";
    });
  });
  startButton.addEventListener("click", () => {
    startButton.disabled = true;
    post("/api/jobs", body()).then((job) => { window.location = job.url; })
      .catch((error) => { setText("start-error", error.message); startButton.disabled = false; });
  });
}

// -- should I fine-tune? (tunelab advise) ------------------------------------------------------

function setUpAdvise() {
  const button = document.getElementById("advise-button");
  if (!button) return;
  button.addEventListener("click", () => {
    setText("advise-error", "");
    button.disabled = true;
    post("/api/advise", {
      config: document.getElementById("advise-config").value,
      overrides: document.getElementById("advise-overrides").value,
      budget_minutes: document.getElementById("advise-budget").value,
      label_usd: document.getElementById("advise-label-usd").value,
      retrain_every: document.getElementById("advise-retrain").value,
    }).then((job) => { window.location = job.url; })
      .catch((error) => { setText("advise-error", error.message); button.disabled = false; });
  });
}

// -- blind review with the keyboard ------------------------------------------------------------

function renderReview(state) {
  setText("progress", state.done + " / " + state.total);
  const bar = document.getElementById("progress-bar");
  if (bar) { bar.max = state.total; bar.value = state.done; }
  const item = document.getElementById("item");
  if (state.next) {
    setText("prompt", state.next.prompt);
    setText("output-a", state.next.output_a);
    setText("output-b", state.next.output_b);
    document.getElementById("example-id").value = state.next.id;
    item.classList.remove("hidden");
    document.getElementById("all-done").classList.add("hidden");
  } else {
    item.classList.add("hidden");
    document.getElementById("all-done").classList.remove("hidden");
  }
  const s = state.score;
  setText("score", s ? percent(s.win_rate) + " (95% Wilson interval " + percent(s.low) + " to " + percent(s.high) + ") over " + s.judged +
    " judgments: tuned " + s.tuned_wins + ", base " + s.base_wins + ", ties " + s.ties + " (half each)" : "no judgment yet");
  const reviewers = document.getElementById("reviewers");
  reviewers.innerHTML = "";
  Object.entries(state.reviewers).forEach(([name, count]) => {
    const item = document.createElement("li");
    item.textContent = name + ": " + count;
    reviewers.appendChild(item);
  });
  const agreement = document.getElementById("agreement").tBodies[0];
  agreement.innerHTML = "";
  state.agreement.forEach((a) => {
    const row = agreement.insertRow();
    [a.reviewer_a + " · " + a.reviewer_b, a.rows, a.agreed, a.kappa === null ? "-" : a.kappa.toFixed(3)].forEach((value) => {
      row.insertCell().textContent = value;
    });
  });
}

function setUpReview() {
  const review = document.getElementById("review");
  if (!review) return;
  const run = review.dataset.run;
  const reviewer = review.dataset.reviewer;
  const nameInput = document.getElementById("reviewer-name");
  if (nameInput && !nameInput.value) nameInput.value = localStorage.getItem("tunelab-reviewer") || "";
  if (reviewer) localStorage.setItem("tunelab-reviewer", reviewer);
  let busy = false;
  function judge(choice) {
    const id = document.getElementById("example-id");
    if (!reviewer || busy || !id || !id.value || document.getElementById("item").classList.contains("hidden")) return;
    busy = true;
    post("/api/runs/" + run + "/review", { reviewer: reviewer, example_id: id.value, preference: choice })
      .then(renderReview)
      .catch((error) => setText("review-error", error.message))
      .finally(() => { busy = false; });
  }
  document.querySelectorAll("#item button[data-choice]").forEach((button) => {
    button.addEventListener("click", () => judge(button.dataset.choice));
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
    const choice = { "1": "A", "2": "B", t: "tie", s: "skip" }[event.key.toLowerCase()];
    if (choice) {
      event.preventDefault();
      judge(choice);
    }
  });
  document.getElementById("export-pairs").addEventListener("click", () => {
    post("/api/runs/" + run + "/review/pairs").then((result) => {
      const holder = document.getElementById("pairs-result");
      holder.textContent = "wrote " + result.pairs + " pairs (tuned chosen " + result.tuned_chosen + ", base " + result.base_chosen +
        "; left out " + result.ties + " ties) to ";
      const link = document.createElement("a");
      link.href = result.url;
      link.textContent = result.path;
      holder.appendChild(link);
    }).catch((error) => setText("pairs-result", error.message));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpRunsTable();
  setUpLoss();
  setUpJob();
  setUpStart();
  setUpAdvise();
  setUpReview();
});
