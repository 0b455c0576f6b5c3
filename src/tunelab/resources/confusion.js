// Confusion matrices of tunelab (report.html and the web interface share this script and its markup):
// sort the classes (rows and columns together, so the diagonal stays the diagonal) by name, support,
// recall, precision or F1, and show only the classes with errors. No library, no network.
(function () {
  "use strict";
  function setUp(block) {
    if (block.dataset.ready) return;
    block.dataset.ready = "1";
    var table = block.querySelector("table.confusion");
    var body = table.tBodies[0];
    var header = table.tHead.rows[0];
    var size = body.rows.length;
    var sort = block.querySelector("[data-sort]");
    var errorsOnly = block.querySelector("[data-errors-only]");
    function order() {
      var key = sort ? sort.value : "index";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        if (key === "label") return a.dataset.label.localeCompare(b.dataset.label);
        if (key === "index") return Number(a.dataset.index) - Number(b.dataset.index);
        var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
        x = isNaN(x) ? Infinity : x; y = isNaN(y) ? Infinity : y;
        // support: most first; recall, precision, F1: worst first (what to look at)
        return key === "support" ? y - x : x - y;
      });
      return rows.map(function (row) { return Number(row.dataset.index); });
    }
    function apply() {
      var indices = order();
      var position = {};
      indices.forEach(function (index, at) { position[index] = at; });
      // Reorder the predicted-label columns (cells 1..size) of the header and of every row the same way.
      [header].concat(Array.prototype.slice.call(body.rows)).forEach(function (row) {
        var cells = Array.prototype.slice.call(row.cells, 1, 1 + size);
        var after = row.cells[1 + size] || null;
        cells.sort(function (a, b) { return position[a.dataset.col] - position[b.dataset.col]; });
        cells.forEach(function (cell) { row.insertBefore(cell, after); });
      });
      indices.forEach(function (index) { body.appendChild(body.querySelector('tr[data-index="' + index + '"]')); });
      var only = errorsOnly && errorsOnly.checked;
      Array.prototype.forEach.call(body.rows, function (row) {
        row.hidden = only && row.dataset.errors === "0";
      });
    }
    if (sort) sort.addEventListener("change", apply);
    if (errorsOnly) errorsOnly.addEventListener("change", apply);
    Array.prototype.forEach.call(header.querySelectorAll("th[data-sort-key]"), function (th) {
      th.addEventListener("click", function () { if (sort) { sort.value = th.dataset.sortKey; apply(); } });
    });
  }
  function setUpAll() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-confusion]"), setUp);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpAll);
  else setUpAll();
  window.tunelabConfusions = setUpAll;
})();
