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
  const playground = document.getElementById("playground-selected");
  const boxes = Array.from(table.querySelectorAll(".select-run"));
  const selected = () => boxes.filter((b) => b.checked).map((b) => "runs=" + encodeURIComponent(b.value));
  boxes.forEach((box) => box.addEventListener("change", () => {
    const count = boxes.filter((b) => b.checked).length;
    button.disabled = count < 2;
    if (playground) playground.disabled = count < 1 || count > 2;
  }));
  button.addEventListener("click", () => { window.location = "/compare?" + selected().join("&"); });
  if (playground) playground.addEventListener("click", () => { window.location = "/playground?" + selected().join("&"); });
}

// -- the steps done (the curves and the live panel are in charts.js) -----------------------------

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

// -- a started run -------------------------------------------------------------------------------

function updateJob(state) {
  setText("job-status", state.job_status);
  const status = document.getElementById("job-status");
  if (status) status.className = "status-" + state.job_status;
  setText("job-log", state.log || "");
  setText("job-verdict", state.verdict || "");
  const verdict = document.getElementById("job-verdict");
  if (verdict) verdict.className = "verdict verdict-" + (state.verdict_kind || "none") + (state.verdict ? "" : " hidden");
  const link = document.getElementById("run-link");
  if (link && state.run_id) {
    link.href = "/runs/" + state.run_id;
    link.classList.remove("hidden");
  }
  const cancel = document.getElementById("cancel-button");
  if (cancel) cancel.disabled = !state.can_cancel;
  const cloud = document.getElementById("cloud-cancel");
  if (cloud && state.cloud_cancel) {
    cloud.textContent = state.cloud_cancel;
    cloud.classList.remove("hidden");
  }
}

function setUpJob() {
  const job = document.getElementById("job");
  if (!job) return;
  document.getElementById("cancel-button").addEventListener("click", () => {
    post("/api/jobs/" + job.dataset.job + "/cancel").then(updateJob);
  });
}

function setUpResume() {
  const button = document.getElementById("resume-button");
  if (!button) return;
  button.addEventListener("click", () => {
    setText("resume-error", "");
    button.disabled = true;
    post("/api/runs/" + button.dataset.run + "/resume").then((job) => { window.location = job.url; })
      .catch((error) => { setText("resume-error", error.message); button.disabled = false; });
  });
}

// -- promote a finished run under an alias, or roll an alias back (tunelab promote / rollback) -------

function setUpPromote() {
  const button = document.getElementById("promote-button");
  if (!button) return;
  const act = (control, url, body) => {
    setText("promote-error", "");
    control.disabled = true;
    // The page is rendered again: it lists the aliases that point at this run now.
    post(url, body).then(() => window.location.reload())
      .catch((error) => { setText("promote-error", error.message); control.disabled = false; });
  };
  const promote = () => act(button, "/api/runs/" + button.dataset.run + "/promote", { alias: document.getElementById("promote-alias").value });
  button.addEventListener("click", promote);
  document.getElementById("promote-alias").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); promote(); }
  });
  document.querySelectorAll(".rollback-button").forEach((rollback) => {
    rollback.addEventListener("click", () => act(rollback, "/api/aliases/" + encodeURIComponent(rollback.dataset.alias) + "/rollback"));
  });
}

// -- start a run: the estimate first ----------------------------------------------------------

function setUpStart() {
  const form = document.getElementById("start-form");
  if (!form) return;
  const body = () => {
    const fields = {};
    form.querySelectorAll("[data-field]").forEach((input) => { if (input.value.trim()) fields[input.dataset.field] = input.value.trim(); });
    return {
      config: document.getElementById("config-path").value,
      fields: fields,
      overrides: document.getElementById("overrides").value,
      calibrate: document.getElementById("calibrate").checked,
    };
  };
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
      const warnings = document.getElementById("estimate-warnings");
      warnings.innerHTML = "";
      (result.warnings || []).forEach((text) => { warnings.appendChild(document.createElement("li")).textContent = text; });
      document.getElementById("estimate-result").classList.remove("hidden");
      setText("estimate-command", result.command ? "will run: " + result.command : "");
      startButton.disabled = false;
      startButton.title = "";
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
    setText("reference", state.next.reference || "-");
    document.getElementById("example-id").value = state.next.id;
    item.classList.remove("hidden");
    document.getElementById("all-done").classList.add("hidden");
  } else {
    item.classList.add("hidden");
    document.getElementById("all-done").classList.toggle("hidden", !state.total);
  }
  const s = state.score;
  setText("score", s ? percent(s.win_rate) + " (95% Wilson interval " + percent(s.low) + " to " + percent(s.high) + ") over " + s.judged +
    " judgments: tuned " + s.tuned_wins + ", " + (state.opponent || "base") + " " + s.base_wins + ", ties " + s.ties + " (half each)" : "no judgment yet");
  const reviewers = document.getElementById("reviewers");
  reviewers.innerHTML = "";
  Object.entries(state.reviewers).forEach(([name, count]) => {
    const item = document.createElement("li");
    item.textContent = name + ": " + count;
    reviewers.appendChild(item);
  });
  if (!Object.keys(state.reviewers).length) reviewers.innerHTML = "<li class='empty'>no reviews yet</li>";
  const empty = document.getElementById("agreement-empty");
  if (empty) {
    empty.classList.toggle("hidden", state.agreement.length > 0);
    empty.textContent = Object.keys(state.reviewers).length ? "no two reviewers have judged the same rows yet" : "no reviews yet";
  }
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

// -- the playground: one run, or two side by side -----------------------------------------------

function renderAnswer(answer) {
  const box = document.createElement("div");
  box.className = "answer";
  box.dataset.run = answer.run;
  const title = document.createElement("h3");
  title.textContent = answer.run + " ";
  const meta = document.createElement("small");
  meta.textContent = "(" + answer.task + ", " + answer.seconds.toFixed(2) + " s" + (answer.tokens ? ", " + answer.tokens + " tokens" : "") + ")";
  title.appendChild(meta);
  box.appendChild(title);
  if (answer.task === "classify") {
    const label = document.createElement("p");
    label.className = "label";
    label.innerHTML = "label: <strong></strong>" + (answer.out_of_scope ? " <span class='warning'>(out of scope: below the run's threshold)</span>" : "");
    label.querySelector("strong").textContent = answer.label;
    box.appendChild(label);
    const table = document.createElement("table");
    table.className = "probabilities";
    answer.probabilities.forEach(([name, p]) => {
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = p.toFixed(3);
      const bar = row.insertCell();
      bar.className = "bar-cell";
      const fill = document.createElement("span");
      fill.style.width = (100 * p).toFixed(1) + "%";
      bar.appendChild(fill);
    });
    box.appendChild(table);
  } else {
    const text = document.createElement("pre");
    text.className = "text answer-text";
    text.textContent = answer.text;
    box.appendChild(text);
  }
  return box;
}

function setUpPlayground() {
  const form = document.getElementById("playground-form");
  if (!form) return;
  const button = document.getElementById("playground-ask");
  const holder = document.getElementById("playground-answers");
  function ask() {
    const runs = Array.from(document.querySelectorAll(".playground-run")).map((s) => s.value).filter(Boolean);
    setText("playground-error", "");
    if (!runs.length) { setText("playground-error", "pick a run first"); return; }
    button.disabled = true;
    button.textContent = "Answering…";
    post("/api/playground", {
      runs: runs, prompt: document.getElementById("playground-prompt").value,
      max_tokens: parseInt(document.getElementById("playground-max-tokens").value, 10) || 128,
    }).then((result) => {
      holder.innerHTML = "";
      holder.style.setProperty("--columns", result.answers.length);
      result.answers.forEach((answer) => holder.appendChild(renderAnswer(answer)));
    }).catch((error) => setText("playground-error", error.message)).finally(() => {
      button.disabled = false;
      button.textContent = "Ask";
    });
  }
  button.addEventListener("click", ask);
  document.getElementById("playground-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); ask(); }
  });
  document.querySelectorAll(".playground-run").forEach((select) => select.addEventListener("change", () => {
    const picked = Array.from(document.querySelectorAll(".playground-run")).map((s) => s.value).filter(Boolean);
    history.replaceState(null, "", "/playground?" + picked.map((r) => "runs=" + encodeURIComponent(r)).join("&"));
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  setUpPlayground();
  setUpRunsTable();
  setUpJob();
  setUpResume();
  setUpPromote();
  setUpStart();
  setUpAdvise();
  setUpReview();
});
