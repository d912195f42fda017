// Small plain JS for the live parts of the portal (no framework, no CDN).
(function () {
  "use strict";

  // Confirmation for destructive forms.
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });

  // Study page: poll the round timeline every 2 s while the study is live.
  function startLive() {
    var box = document.getElementById("live");
    if (!box || !box.dataset.liveUrl) return;
    var status = box.dataset.status, key = box.dataset.liveKey, busy = false;
    var timer = setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(box.dataset.liveUrl, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          var st = r.headers.get("X-Study-Status"), k = r.headers.get("X-Live-Key");
          return r.text().then(function (html) {
            box.innerHTML = html;
            if (k && k !== key) {
              key = k;
              ["chart-metrics", "chart-privacy"].forEach(function (id) {
                var img = document.getElementById(id);
                if (img) img.src = img.src.split("?")[0] + "?k=" + encodeURIComponent(k);
              });
            }
            if (st && st !== status) { clearInterval(timer); window.location.reload(); }
          });
        })
        .catch(function () { /* transient: try again on the next tick */ })
        .finally(function () { busy = false; });
    }, 2000);
  }

  // New-study form: presets and a live privacy preview.
  function startForm() {
    var form = document.getElementById("study-form");
    if (!form) return;
    var presets = JSON.parse(document.getElementById("presets-data").textContent);
    document.querySelectorAll("[data-preset]").forEach(function (b) {
      b.addEventListener("click", function () {
        var p = presets[b.dataset.preset];
        Object.keys(p).forEach(function (k) {
          var el = form.elements[k];
          if (el && k !== "label") el.value = p[k];
        });
        if (form.elements.settings) form.elements.settings.value = "manual";  // a preset's values, not auto
        refresh();
      });
    });
    var box = document.getElementById("privacy-preview"), t = null, seq = 0;
    function refresh() {
      var mine = ++seq;  // answers can arrive out of order: show only the latest
      var q = new URLSearchParams();
      ["epsilon", "delta", "batch_size", "rounds", "local_epochs"].forEach(function (k) { q.set(k, form.elements[k].value); });
      q.set("sizes", form.elements["dataset_sizes"].value);
      fetch(box.dataset.url + "?" + q.toString(), {credentials: "same-origin"})
        .then(function (r) { return r.text(); })
        .then(function (html) { if (mine === seq) box.innerHTML = html; })
        .catch(function () { if (mine === seq) box.innerHTML = "<p class='muted'>Preview unavailable.</p>"; });
    }
    ["epsilon", "delta", "batch_size", "rounds", "local_epochs", "dataset_sizes"].forEach(function (k) {
      form.elements[k].addEventListener("input", function () { clearTimeout(t); t = setTimeout(refresh, 500); });
    });
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () { startLive(); startForm(); });
})();
