// edgetoken tokens page: progressive enhancement only; every action works without it.
// Copy (Clipboard API, falling back to selecting the text), a confirmation before Revoke,
// local times, and clearing the one-time token when the page is left or restored.
"use strict";
(function () {
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function localText(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  function relative(ms) {
    var past = ms < 0, m = Math.round(Math.abs(ms) / 60000), text;
    if (m < 1) text = "less than a minute";
    else if (m < 60) text = m + (m === 1 ? " minute" : " minutes");
    else {
      var h = Math.floor(m / 60), r = m % 60;
      text = h + (h === 1 ? " hour" : " hours") + (r ? " " + r + " min" : "");
    }
    return past ? text + " ago" : "in " + text;
  }
  function times() {
    var now = Date.now();
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.textContent = localText(d);
      t.title = d.toString();
      if (t.hasAttribute("data-rel")) {
        var rel = t.parentNode.querySelector(".rel");
        if (!rel) { rel = document.createElement("span"); rel.className = "rel"; t.after(rel); }
        rel.textContent = relative(d.getTime() - now);
      }
    });
  }
  function copy(button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById("copy-status");
    if (!field) return;
    function fallback() {
      field.focus();
      field.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      status.textContent = ok ? "Copied." : "Selected: press Ctrl+C (or Cmd+C) to copy.";
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(function () {
        status.textContent = "Copied to the clipboard.";
      }, fallback);
    } else {
      fallback();
    }
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button[data-copy]");
    if (b) copy(b);
  });
  // Revoke: ask first; when confirmed, tell the server so it skips its own confirmation page.
  document.addEventListener("submit", function (e) {
    var form = e.target, button = e.submitter;
    var question = form.getAttribute("data-confirm") ||
      (button && button.form && button.form.getAttribute("data-confirm"));
    if (!question) return;
    if (!window.confirm(question)) { e.preventDefault(); return; }
    if (!form.querySelector("input[name=confirm]")) {
      var c = document.createElement("input");
      c.type = "hidden"; c.name = "confirm"; c.value = "yes";
      form.appendChild(c);
    }
  });
  // Picking a single category switches the permissions choice to "Choose per category".
  document.addEventListener("change", function (e) {
    if (e.target.hasAttribute("data-category") && e.target.value) {
      var custom = document.getElementById("scope-custom");
      if (custom) custom.checked = true;
    }
  });
  // The one-time token must not come back from the back/forward cache.
  function forget() {
    document.querySelectorAll("[data-secret]").forEach(function (s) {
      s.value = "";
      s.textContent = "";
    });
  }
  window.addEventListener("pagehide", forget);
  window.addEventListener("pageshow", function (e) { if (e.persisted) forget(); });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", times);
  else times();
}());
