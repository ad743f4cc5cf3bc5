// Filters the rows of a cai report. The rows are static markup; their
// facets (id, principles, rounds, stage, reject reason) come from the JSON
// block #cai-facets, one entry per row element, in order.
(function () {
  "use strict";
  var facets = JSON.parse(document.getElementById("cai-facets").textContent);
  var rows = document.querySelectorAll("[data-row]");
  var form = document.getElementById("filters");
  if (!form || rows.length !== facets.length) {
    return;
  }
  form.hidden = false;
  var field = function (id) {
    return document.getElementById(id);
  };
  var count = field("f-count");
  var texts = new Array(rows.length);
  var value = function (id) {
    var el = field(id);
    return el ? el.value : "";
  };
  var apply = function () {
    var q = value("f-q").trim().toLowerCase();
    var id = value("f-id").trim().toLowerCase();
    var principle = value("f-principle");
    var round = value("f-round");
    var stage = value("f-stage");
    var reason = value("f-reason");
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var f = facets[i];
      var ok =
        (!id || f.id.toLowerCase().indexOf(id) >= 0) &&
        (!principle || f.p.indexOf(principle) >= 0) &&
        (!round || f.r.indexOf(Number(round)) >= 0) &&
        (!stage || f.s === stage) &&
        (!reason || String(f.x) === reason);
      if (ok && q) {
        if (texts[i] === undefined) {
          texts[i] = rows[i].textContent.toLowerCase();
        }
        ok = texts[i].indexOf(q) >= 0;
      }
      rows[i].hidden = !ok;
      if (ok) {
        shown++;
      }
    }
    count.textContent = shown + " of " + rows.length + " rows shown";
  };
  var expand = function (open) {
    for (var i = 0; i < rows.length; i++) {
      if (!rows[i].hidden || !open) {
        rows[i].firstElementChild.open = open;
      }
    }
  };
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  form.addEventListener("reset", function () {
    setTimeout(apply, 0);
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
  });
  field("f-expand").addEventListener("click", function () {
    expand(true);
  });
  field("f-collapse").addEventListener("click", function () {
    expand(false);
  });
  apply();
})();
